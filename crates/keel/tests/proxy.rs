//! `keel proxy` in front of real `keel service` processes (and, for the cluster route, a
//! real monitor and data nodes): balancing order, a backend killed under load, what is
//! and is not retried, ejection and recovery with slow start, panic mode, a failover
//! behind the proxy, reloads, and bad input.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{KeelProcess, StatusCode, TestMonitor, TestNode, free_port, url_for, wait_until};

/// A `keel service` on a free port.
struct Service {
    proc: KeelProcess,
    url: String,
    args: Vec<String>,
}

impl Service {
    fn start(name: &str) -> Service {
        let port = free_port();
        let args: Vec<String> = ["service", "--name", name, "--listen"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("127.0.0.1:{port}")])
            .collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = KeelProcess::spawn(name, &refs);
        let url = url_for(port);
        support::wait_for_health(&mut proc, &url);
        Service { proc, url, args }
    }

    fn restart(&mut self) {
        self.proc.restart(&self.args, &self.url);
    }
}

/// A `keel proxy` with its admin API, started from a config file written by the test.
struct Proxy {
    proc: KeelProcess,
    url: String,
    admin: String,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const TOKEN: &str = "proxy-test-token-0123456789";

impl Proxy {
    /// Starts a proxy whose config file holds `body` (listen and admin are added).
    fn start(body: &str) -> Proxy {
        let dir = support::tempdir();
        let (port, admin_port) = (free_port(), free_port());
        let config = dir.path().join("proxy.toml");
        let token = dir.path().join("admin.token");
        std::fs::write(&token, TOKEN).expect("write token");
        write_config(&config, port, admin_port, body);
        let config_arg = config.display().to_string();
        let token_arg = token.display().to_string();
        let mut proc = KeelProcess::spawn(
            "proxy",
            &["proxy", "--config", &config_arg, "--token-file", &token_arg],
        );
        let admin = url_for(admin_port);
        support::wait_for_health(&mut proc, &admin);
        Proxy {
            proc,
            url: url_for(port),
            admin,
            config,
            _dir: dir,
        }
    }

    /// Rewrites the config file (same listen and admin) and sends SIGHUP.
    fn reload_with(&self, body: &str) {
        let port = |url: &str| {
            url.rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        };
        write_config(&self.config, port(&self.url), port(&self.admin), body);
        self.proc.signal(Signal::SIGHUP);
    }

    fn backends(&self) -> serde_json::Value {
        let (status, body) = support::get_json(&format!("{}/v1/backends", self.admin));
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// The admin API's entry for one backend.
    fn backend(&self, name: &str) -> serde_json::Value {
        self.backends()["backends"]
            .as_array()
            .and_then(|all| all.iter().find(|b| b["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = support::get_text(&format!("{}/metrics", self.admin));
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }
}

fn write_config(path: &Path, port: u16, admin_port: u16, body: &str) {
    let text = format!("listen = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin_port}\"\n{body}");
    std::fs::write(path, text).expect("write config");
}

fn backend_block(name: &str, url: &str, weight: u32) -> String {
    format!("[[backend]]\nname = \"{name}\"\nurl = \"{url}\"\nweight = {weight}\n")
}

/// `GET url`: status and the `Keel-Backend` that answered.
fn get_backend(client: &reqwest::blocking::Client, url: &str) -> (StatusCode, String) {
    let resp = client
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let backend = resp
        .headers()
        .get("keel-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (resp.status(), backend)
}

fn sequence(proxy: &Proxy, n: usize) -> Vec<String> {
    let client = support::http_client();
    (0..n)
        .map(|_| {
            let (status, backend) = get_backend(&client, &format!("{}/", proxy.url));
            assert_eq!(status, StatusCode::OK);
            backend
        })
        .collect()
}

#[test]
fn equal_weights_give_exact_round_robin_and_three_to_one_is_smooth() {
    let (s1, s2) = (Service::start("service1"), Service::start("service2"));
    let proxy = Proxy::start(&format!(
        "{}{}",
        backend_block("service1", &s1.url, 1),
        backend_block("service2", &s2.url, 1)
    ));
    let seq = sequence(&proxy, 10);
    for pair in seq.windows(2) {
        assert_ne!(pair[0], pair[1], "not alternating: {seq:?}");
    }
    assert_eq!(seq.iter().filter(|b| *b == "service1").count(), 5);

    let weighted = Proxy::start(&format!(
        "{}{}",
        backend_block("service1", &s1.url, 3),
        backend_block("service2", &s2.url, 1)
    ));
    let seq = sequence(&weighted, 40);
    let expected: Vec<&str> = ["service1", "service1", "service2", "service1"]
        .into_iter()
        .cycle()
        .take(40)
        .collect();
    assert_eq!(seq, expected, "smooth 3:1");
    let longest = seq
        .chunk_by(|a, b| a == b)
        .map(|run| (run[0].clone(), run.len()))
        .fold(HashMap::new(), |mut m, (name, len)| {
            let e = m.entry(name).or_insert(0);
            *e = len.max(*e);
            m
        });
    assert!(
        longest["service1"] <= 3,
        "no burst longer than the weight: {seq:?}"
    );
    assert_eq!(longest["service2"], 1);
}

#[test]
fn a_backend_killed_under_steady_get_load_fails_no_request() {
    let (mut s1, s2) = (Service::start("service1"), Service::start("service2"));
    let proxy = Proxy::start(&format!(
        "{}{}",
        backend_block("service1", &s1.url, 1),
        backend_block("service2", &s2.url, 1)
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, url) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                format!("{}/", proxy.url),
            );
            thread::spawn(move || {
                let client = support::http_client();
                let mut failures = Vec::new();
                // Bounded: at most 20 s, and the test stops it after about 3 s.
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.get(&url).send() {
                        Ok(r) if r.status() == StatusCode::OK => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!(
                            "{} {}",
                            r.status(),
                            r.text().unwrap_or_default()
                        )),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || ok
        .load(Ordering::Relaxed)
        >= 200));
    s1.proc.kill9();
    let at_kill = ok.load(Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(10), || ok
        .load(Ordering::Relaxed)
        >= at_kill + 500));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    assert!(
        failures.is_empty(),
        "failed GETs: {failures:?}\n{}",
        proxy.proc.log_report()
    );
    let killed = proxy.backend("service1");
    assert_eq!(killed["state"], "ejected", "{killed}");
    assert!(killed["ejections"].as_u64() >= Some(1), "{killed}");
}

/// A backend that counts the requests it gets (health checks aside) and answers each
/// with `503`, or by closing the connection without a word (`reset`).
struct Stub {
    url: String,
    seen: Arc<AtomicUsize>,
}

impl Stub {
    fn start(reset: bool) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        let url = url_for(listener.local_addr().expect("addr").port());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = Arc::clone(&counter);
                thread::spawn(move || serve_stub(stream, &counter, reset));
            }
        });
        Stub { url, seen }
    }
}

fn serve_stub(stream: TcpStream, seen: &AtomicUsize, reset: bool) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut stream = stream;
    loop {
        let Some((request_line, body_len)) = read_head(&mut reader) else {
            return;
        };
        let mut body = vec![0; body_len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.fetch_add(1, Ordering::SeqCst);
        if reset {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 8\r\n\r\nstub: {}\n",
            &request_line[..1]
        );
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads a request head: its first line and its `Content-Length`.
fn read_head(reader: &mut impl BufRead) -> Option<(String, usize)> {
    let mut first = String::new();
    if reader.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some((first, length));
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
}

#[test]
fn a_post_whose_body_went_out_is_not_retried_but_a_get_is() {
    for reset in [false, true] {
        let (a, b) = (Stub::start(reset), Stub::start(reset));
        let proxy = Proxy::start(&format!(
            "[health]\ninterval = \"0s\"\n{}{}",
            backend_block("a", &a.url, 1),
            backend_block("b", &b.url, 1)
        ));
        let seen = || a.seen.load(Ordering::SeqCst) + b.seen.load(Ordering::SeqCst);
        let client = support::http_client();
        let resp = client
            .post(format!("{}/orders", proxy.url))
            .body("one order")
            .send()
            .expect("POST through the proxy");
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        assert_eq!(
            seen(),
            1,
            "reset={reset}: the POST reached {} backends: {text}",
            seen()
        );
        if reset {
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
            assert!(text.contains("not idempotent"), "{text}");
        } else {
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "the backend's own answer: {text}"
            );
        }
        // The control: a GET meets the same failure and is retried on the other backend.
        let resp = client
            .get(format!("{}/orders", proxy.url))
            .send()
            .expect("GET through the proxy");
        assert!(!resp.status().is_success());
        assert_eq!(seen(), 3, "reset={reset}: the GET went to both backends");
        assert!(
            proxy.metric("keel_proxy_backend_retries_total{backend=\"a\"}")
                + proxy.metric("keel_proxy_backend_retries_total{backend=\"b\"}")
                >= 1.0
        );
    }
}

#[test]
fn an_ejected_backend_comes_back_after_rise_checks_and_ramps_up_slowly() {
    let (mut s1, s2) = (Service::start("service1"), Service::start("service2"));
    let proxy = Proxy::start(&format!(
        "slow_start = \"20s\"\n\
         [health]\ninterval = \"300ms\"\nfast_interval = \"100ms\"\nrise = 2\nfall = 2\n\
         [passive]\nejection = \"10ms\"\n{}{}",
        backend_block("service1", &s1.url, 1),
        backend_block("service2", &s2.url, 1)
    ));
    s1.proc.kill9();
    // Traffic finds the dead backend (a refused connection ejects it at once). The
    // ejection is over long before service1 is back, so coming back is the checks' doing
    // alone: exactly `rise` good ones.
    sequence(&proxy, 4);
    let state = |p: &Proxy| {
        p.backend("service1")["state"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        wait_until(Duration::from_secs(5), || matches!(
            state(&proxy).as_str(),
            "ejected" | "down"
        )),
        "{}",
        proxy.backend("service1")
    );
    s1.restart();
    assert!(
        wait_until(Duration::from_secs(10), || state(&proxy) == "warming"),
        "{}",
        proxy.backend("service1")
    );
    let back = proxy.backend("service1");
    assert_eq!(back["why"], "2 good checks", "{back}");
    let share = back["weight_share"].as_f64().unwrap_or(1.0);
    assert!(share < 0.5, "slow start begins low: {back}");
    let seq = sequence(&proxy, 40);
    let to_s1 = seq.iter().filter(|b| *b == "service1").count();
    assert!(
        (1..20).contains(&to_s1),
        "a warming backend gets some but less than half: {to_s1} of 40"
    );
}

#[test]
fn when_every_backend_looks_down_the_proxy_spreads_over_all_of_them() {
    let (s1, s2) = (Service::start("service1"), Service::start("service2"));
    // Checks against a path the services do not have: every backend fails its checks,
    // though each would serve real requests.
    let proxy = Proxy::start(&format!(
        "[health]\npath = \"/no-such-check\"\ninterval = \"100ms\"\nfast_interval = \"50ms\"\nfall = 2\n{}{}",
        backend_block("service1", &s1.url, 1),
        backend_block("service2", &s2.url, 1)
    ));
    assert!(wait_until(Duration::from_secs(5), || {
        proxy.backends()["backends"]
            .as_array()
            .is_some_and(|all| all.iter().all(|b| b["state"] == "down"))
    }));
    let seq = sequence(&proxy, 6);
    assert!(
        seq.contains(&"service1".to_owned()) && seq.contains(&"service2".to_owned()),
        "{seq:?}"
    );
    assert!(proxy.metric("keel_proxy_panic_picks_total") >= 6.0);
}

#[test]
fn a_failover_behind_the_proxy_shows_only_503s_with_retry_after_then_success() {
    let dir = support::tempdir();
    let monitor = TestMonitor::start(&dir.path().join("monitor"), &[]);
    let mut nodes = vec![TestNode::monitored(
        "app1",
        dir.path().join("app1"),
        &monitor.url,
        &[],
    )];
    assert!(wait_until(
        Duration::from_secs(10),
        || monitor.cluster()["primary"]["node"] == "app1"
    ));
    nodes.push(TestNode::monitored(
        "app2",
        dir.path().join("app2"),
        &monitor.url,
        &[],
    ));
    assert!(wait_until(Duration::from_secs(15), || {
        monitor.cluster()["nodes"].as_array().is_some_and(|n| {
            n.len() == 2
                && n.iter()
                    .all(|n| n["role"] == "primary" || n["promotable"] == true)
        })
    }));
    let proxy = Proxy::start(&format!("[cluster]\nmonitor = \"{}\"\n", monitor.url));
    let client = support::http_client();
    let put = |i: usize| {
        client
            .put(format!("{}/v1/kv/k{i}", proxy.url))
            .body(format!("v{i}"))
            .send()
            .expect("PUT through the proxy")
    };
    assert!(wait_until(Duration::from_secs(5), || put(0).status() == StatusCode::OK));
    let mut acked = Vec::new();
    let mut unavailable = 0;
    let mut killed = false;
    let mut ok_after_503 = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 1;
    while ok_after_503 < 20 && Instant::now() < deadline {
        if i == 20 && !killed {
            nodes[0].kill9();
            killed = true;
        }
        let resp = put(i);
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after").is_some();
        let body = resp.text().unwrap_or_default();
        match status {
            StatusCode::OK => {
                acked.push(i);
                if unavailable > 0 {
                    ok_after_503 += 1;
                }
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(retry_after, "a 503 without Retry-After: {body}");
                assert!(
                    body.contains("\"error\""),
                    "a 503 without a JSON reason: {body}"
                );
                unavailable += 1;
                thread::sleep(Duration::from_millis(20));
            }
            other => panic!("PUT k{i}: {other} {body}\n{}", proxy.proc.log_report()),
        }
        i += 1;
    }
    assert!(unavailable > 0, "the failover window was not seen");
    assert!(
        ok_after_503 >= 20,
        "writes did not succeed again after the failover"
    );
    let view = support::get_json(&format!("{}/v1/route", proxy.admin)).1;
    assert_eq!(view["primary"]["node"], "app2", "{view}");
    for i in acked {
        let (status, value) = support::get_text(&format!("{}/v1/kv/k{i}", proxy.url));
        assert_eq!(
            (status, value),
            (StatusCode::OK, format!("v{i}")),
            "acked write k{i}"
        );
    }
}

/// Sends `GET /` on an open connection and reads the answer: status and `Keel-Backend`.
fn get_on(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> (u16, String) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .expect("write request");
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (mut length, mut backend) = (0usize, String::new());
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "keel-backend" => backend = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    (code, backend)
}

#[test]
fn sighup_reloads_without_dropping_connections_and_a_bad_file_changes_nothing() {
    let (s1, s2) = (Service::start("service1"), Service::start("service2"));
    let proxy = Proxy::start(&backend_block("service1", &s1.url, 1));
    let mut stream = TcpStream::connect(proxy.url.trim_start_matches("http://")).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    assert_eq!(
        get_on(&mut stream, &mut reader),
        (200, "service1".to_owned())
    );

    proxy.reload_with(&format!(
        "{}{}",
        backend_block("service1", &s1.url, 1),
        backend_block("service2", &s2.url, 1)
    ));
    assert!(wait_until(Duration::from_secs(5), || {
        proxy.backends()["backends"]
            .as_array()
            .is_some_and(|b| b.len() == 2)
    }));
    let answered: Vec<String> = (0..4).map(|_| get_on(&mut stream, &mut reader).1).collect();
    assert!(
        answered.contains(&"service2".to_owned()),
        "on the same connection: {answered:?}"
    );

    proxy.reload_with(&format!(
        "{}[health]\nintervall = \"1s\"\n",
        backend_block("service1", &s1.url, 1)
    ));
    let refused = || {
        let health = support::get_json(&format!("{}/health", proxy.admin)).1;
        health["last_reload"]["applied"] == false
            && health["last_reload"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("intervall"))
    };
    assert!(
        wait_until(Duration::from_secs(5), refused),
        "{}",
        proxy.proc.log_report()
    );
    assert_eq!(
        proxy.backends()["backends"].as_array().map(Vec::len),
        Some(2),
        "old config kept"
    );
    let (code, _) = get_on(&mut stream, &mut reader);
    assert_eq!(code, 200, "the connection survived both reloads");
}

#[test]
fn bad_configuration_and_malformed_requests_get_clear_errors() {
    let dir = support::tempdir();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[backend]]\nurl = \"http://127.0.0.1:1\"\nweight = 0\n",
    )
    .expect("write");
    let out = support::run_keel(&["proxy", "--config", &bad.display().to_string()]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("backend[0].weight"), "{out}");
    let out = support::run_keel(&["proxy", "--backend", "localhost:5056"]);
    assert!(!out.success() && out.stderr.contains("http://"), "{out}");
    let out = support::run_keel(&["proxy", "--backend", "http://127.0.0.1:5056,weight=heavy"]);
    assert!(
        !out.success() && out.stderr.contains("weight=heavy"),
        "{out}"
    );

    let s1 = Service::start("service1");
    let proxy = Proxy::start(&backend_block("service1", &s1.url, 1));
    let raw = |request: &[u8]| exchange_raw(&proxy, request);
    let answer = raw(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("missing_host"), "{answer}");
    let answer = raw(b"THIS IS NOT HTTP\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Bodies whose length is ambiguous are refused before anything is sent on (request
    // smuggling), and so is a transfer coding the proxy would have to drop.
    for (request, status, code) in [
        (
            &b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            "400",
            "bad_framing",
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "400",
            "bad_framing",
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "501",
            "unknown_transfer_coding",
        ),
    ] {
        let answer = raw(request);
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer}");
        assert!(answer.contains(code), "{answer}");
    }
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.resize(70 * 1024, b'a');
    let answer = raw(&huge);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        s1.proc.log_text().matches("POST /x").count(),
        0,
        "no refused request reached the backend"
    );
    // A chunked body that breaks the rules on its way: 400, and the connection closes.
    let answer = raw(b"POST /y HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad chunked body"), "{answer}");
    assert_eq!(
        s1.proc.log_text().matches("GET /").count(),
        0,
        "nothing malformed reached the backend"
    );

    let client = support::http_client();
    let weight = format!("{}/v1/backends/service1/weight", proxy.admin);
    let resp = client
        .put(&weight)
        .body("{\"weight\": 5}")
        .send()
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no token");
    let resp = client
        .put(&weight)
        .bearer_auth(TOKEN)
        .body("{\"weight\": 0}")
        .send()
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().unwrap_or_default().contains("1 to 1000"));
    let resp = client
        .put(&weight)
        .bearer_auth(TOKEN)
        .body("heavy")
        .send()
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = client
        .put(&weight)
        .bearer_auth(TOKEN)
        .body("{\"weight\": 5}")
        .send()
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(proxy.backend("service1")["weight"], 5);
    let resp = client
        .post(format!("{}/v1/backends/nobody/drain", proxy.admin))
        .bearer_auth(TOKEN)
        .send()
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(
        resp.text().unwrap_or_default().contains("service1"),
        "names the real ones"
    );
}

/// A backend that records every request exactly as it arrived (head and raw body) and
/// answers by path: `/chunked` in chunks with a hop-by-hop header, `/close` as HTTP/1.0
/// ended by closing, anything else with a `Content-Length` body naming the path.
struct Recorder {
    url: String,
    seen: Arc<Recorded>,
}

/// Each request as it arrived: its head, and its body's raw bytes.
type Recorded = std::sync::Mutex<Vec<(String, Vec<u8>)>>;

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let url = url_for(listener.local_addr().expect("addr").port());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = Arc::clone(&log);
                thread::spawn(move || record(stream, &log));
            }
        });
        Recorder { url, seen }
    }

    /// The requests seen so far on other paths than the health check's.
    fn requests(&self) -> Vec<(String, Vec<u8>)> {
        let seen = self.seen.lock().expect("lock");
        seen.iter()
            .filter(|(head, _)| !head.starts_with("GET /health"))
            .cloned()
            .collect()
    }
}

fn record(stream: TcpStream, log: &Recorded) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut stream = stream;
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
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if lower.contains("transfer-encoding: chunked") {
            // The raw chunks, up to and including the empty line after the last one.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                body.extend_from_slice(line.as_bytes());
                let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                if size == 0 {
                    let mut end = String::new();
                    let _ = reader.read_line(&mut end);
                    body.extend_from_slice(end.as_bytes());
                    break;
                }
                let mut data = vec![0; size + 2];
                if reader.read_exact(&mut data).is_err() {
                    return;
                }
                body.extend_from_slice(&data);
            }
        } else if let Some(n) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            body = vec![0; n];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let is_head = head.starts_with("HEAD ");
        log.lock().expect("lock").push((head, body.clone()));
        let answer = match path.as_str() {
            "/chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: x-hop\r\n\
                           X-Hop: secret\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_owned(),
            "/close" => {
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil close");
                return;
            }
            _ => {
                let text = format!("{path} got {} body bytes\n", body.len());
                let body = if is_head { "" } else { text.as_str() };
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    text.len()
                )
            }
        };
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Sends `request` on a new connection and reads until the proxy closes it.
fn exchange_raw(proxy: &Proxy, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.url.trim_start_matches("http://")).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn the_proxy_relays_bodies_heads_and_connections_as_http_1_1_asks() {
    let backend = Recorder::start();
    let proxy = Proxy::start(&format!(
        "[health]\ninterval = \"0s\"\n{}",
        backend_block("rec", &backend.url, 1)
    ));

    // A chunked upload that waits for `100 Continue`: it gets one from the proxy before
    // sending its body, and the backend gets the same chunks.
    let mut stream = TcpStream::connect(proxy.url.trim_start_matches("http://")).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
              Expect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .expect("head");
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream
        .write_all(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n")
        .expect("body");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("/upload got 24 body bytes\n"), "{answer}");
    let requests = backend.requests();
    let (head, body) = requests.last().expect("the upload arrived");
    assert!(head.starts_with("POST /upload HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("expect:"),
        "answered by the proxy: {head}"
    );
    assert_eq!(body, b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n");

    // Two requests in one write come back as two answers, in order.
    let answer = exchange_raw(
        &proxy,
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let (one, two) = (answer.find("/one got 0"), answer.find("/two got 0"));
    assert!(one.is_some() && one < two, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");

    // A chunked answer stays chunked for an HTTP/1.1 client, loses the header its
    // Connection names, and names the backend.
    let answer = exchange_raw(
        &proxy,
        b"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        "{answer}"
    );
    assert!(!lower.contains("x-hop"), "hop-by-hop: {answer}");
    assert!(lower.contains("keel-backend: rec\r\n"), "{answer}");
    assert!(lower.contains("connection: close\r\n"), "{answer}");
    // An HTTP/1.0 client cannot read chunks: it gets the bare body, ended by closing.
    let answer = exchange_raw(&proxy, b"GET /chunked HTTP/1.0\r\n\r\n");
    assert!(answer.ends_with("\r\n\r\nhello world"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("transfer-encoding"),
        "{answer}"
    );
    // An answer the backend ends by closing is passed on the same way.
    let answer = exchange_raw(&proxy, b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.ends_with("\r\n\r\nuntil close"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("connection: close\r\n"),
        "{answer}"
    );
    // HEAD: the length of what GET would send, and no body.
    let answer = exchange_raw(
        &proxy,
        b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.contains("Content-Length: 20\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer}");

    // An absolute-form target goes on as its path; hop-by-hop headers stay behind;
    // X-Forwarded-For is the client's address, whatever the client wrote (it is no
    // trusted proxy).
    let answer = exchange_raw(
        &proxy,
        b"GET http://example.com/abs?q=1 HTTP/1.1\r\nHost: example.com\r\n\
          X-Forwarded-For: 10.0.0.1\r\nX-Secret: 1\r\nConnection: close, x-secret\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let requests = backend.requests();
    let (head, _) = requests.last().expect("arrived");
    assert!(head.starts_with("GET /abs?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{head}");
    assert!(head.contains("Host: example.com\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("x-secret") && !lower.contains("connection:"),
        "{head}"
    );
    assert!(lower.contains("x-request-id: "), "{head}");
}

#[test]
fn a_full_proxy_closes_its_longest_idle_connection_for_a_new_client() {
    let s1 = Service::start("service1");
    let proxy = Proxy::start(&format!(
        "max_connections = 2\n{}",
        backend_block("service1", &s1.url, 1)
    ));
    let addr = proxy.url.trim_start_matches("http://").to_owned();
    let connect = || {
        let stream = TcpStream::connect(&addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        (stream, reader)
    };
    let (mut first, mut first_reader) = connect();
    assert_eq!(get_on(&mut first, &mut first_reader).0, 200);
    // Enough apart that the first has been idle the longer, whatever the scheduling.
    thread::sleep(Duration::from_millis(100));
    let (mut second, mut second_reader) = connect();
    assert_eq!(get_on(&mut second, &mut second_reader).0, 200);
    assert_eq!(proxy.metric("keel_proxy_connections_open"), 2.0);

    // A third client, with two kept-alive connections open: it is served at once, and
    // the connection idle the longest makes room for it.
    let (mut third, mut third_reader) = connect();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = third_reader.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Hello from service1"), "{answer}");
    let mut byte = [0u8; 1];
    assert_eq!(
        first_reader.read(&mut byte).ok(),
        Some(0),
        "the longest idle connection was closed"
    );
    assert_eq!(
        get_on(&mut second, &mut second_reader).0,
        200,
        "the other one goes on"
    );
    assert_eq!(proxy.metric("keel_proxy_connections_evicted_total"), 1.0);
    assert_eq!(proxy.metric("keel_proxy_connections_limited_total"), 0.0);
    drop(third);
}

#[test]
fn a_drained_backend_gets_no_new_requests_until_undrained() {
    let (s1, s2) = (Service::start("service1"), Service::start("service2"));
    let proxy = Proxy::start(&format!(
        "{}{}",
        backend_block("service1", &s1.url, 1),
        backend_block("service2", &s2.url, 1)
    ));
    let client = support::http_client();
    let admin = |action: &str| {
        let resp = client
            .post(format!("{}/v1/backends/service1/{action}", proxy.admin))
            .bearer_auth(TOKEN)
            .send()
            .expect("admin call");
        assert_eq!(resp.status(), StatusCode::OK);
    };
    admin("drain");
    assert_eq!(proxy.backend("service1")["state"], "drained");
    assert!(sequence(&proxy, 6).iter().all(|b| b == "service2"));
    admin("undrain");
    assert!(sequence(&proxy, 6).contains(&"service1".to_owned()));
}

/// A backend that refuses bodies on sight: on `/close` and `/stall` it answers `413`
/// after the head alone, then closes with the body unread (`/close`) or keeps the
/// connection open without reading another byte (`/stall`). Other paths get `200`.
fn start_refuser() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind refuser");
    let url = url_for(listener.local_addr().expect("addr").port());
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let Ok(clone) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(clone);
                let mut stream = stream;
                while let Some((request_line, body_len)) = read_head(&mut reader) {
                    let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
                    if path == "/close" || path == "/stall" {
                        let refusal = "HTTP/1.1 413 Content Too Large\r\nContent-Length: 22\r\n\
                                       Connection: close\r\n\r\nrefused: body too big\n";
                        let refusal = if path == "/close" {
                            refusal.to_owned()
                        } else {
                            refusal.replace("Connection: close\r\n", "")
                        };
                        let _ = stream.write_all(refusal.as_bytes());
                        if path == "/stall" {
                            thread::sleep(Duration::from_secs(15));
                        }
                        return;
                    }
                    let mut body = vec![0; body_len];
                    if reader.read_exact(&mut body).is_err()
                        || stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn a_backend_that_refuses_a_body_before_reading_it_gets_its_answer_to_the_client() {
    let refuser = start_refuser();
    let proxy = Proxy::start(&format!(
        "[health]\ninterval = \"0s\"\n{}",
        backend_block("refuser", &refuser, 1)
    ));
    let addr = proxy.url.trim_start_matches("http://").to_owned();
    // 32 MiB: far more than the sockets between here and the backend can hold.
    const BODY: usize = 32 << 20;
    for path in ["/close", "/stall"] {
        let mut client = TcpStream::connect(&addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut writer = client.try_clone().expect("clone");
        // The client sends its body without waiting for an answer, as most do.
        let sending = thread::spawn(move || {
            let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n");
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            if writer.write_all(head.as_bytes()).is_ok() {
                while sent < BODY && writer.write_all(&chunk).is_ok() {
                    sent += chunk.len();
                }
            }
        });
        let mut answer = String::new();
        let read = client.read_to_string(&mut answer);
        assert!(read.is_ok(), "{path}: {read:?} after {answer:?}");
        let lower = answer.to_ascii_lowercase();
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{path}: the backend's own answer, not the proxy's: {answer}"
        );
        assert!(
            answer.ends_with("refused: body too big\n"),
            "{path}: {answer}"
        );
        assert!(
            lower.contains("keel-backend: refuser\r\n"),
            "{path}: {answer}"
        );
        // The rest of the body was never read: the connection cannot go on.
        assert!(lower.contains("connection: close\r\n"), "{path}: {answer}");
        drop(client);
        sending.join().expect("sender");
    }
    // Neither refusal is held against the backend or left behind in its pool.
    let client = support::http_client();
    for _ in 0..3 {
        let (status, backend) = get_backend(&client, &format!("{}/", proxy.url));
        assert_eq!((status, backend.as_str()), (StatusCode::OK, "refuser"));
    }
    assert_eq!(proxy.backend("refuser")["state"], "up");
}

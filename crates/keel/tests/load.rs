//! `keel load` against stub servers that count what they saw, and against a real data
//! tier: the report's counts equal the server's, the spread per backend is exact, the
//! verifier catches a write a server acknowledged and dropped, finds none lost on a real
//! cluster (also through a failover), and bad flags get clear errors.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::KeelUp;

// ---------------------------------------------------------------------------------------
// A stub HTTP/1.1 server.
//
// Hand-written on std's TcpListener, one thread per connection: the binary's dependencies
// hold no HTTP server a test could use without a new dependency, and a stub this small
// (keep-alive, Content-Length bodies, which is all keel load sends) is easy to read.

/// What a request looked like to the stub.
struct Seen {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// What the stub answers.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What the stub counted, and the keys it stores.
#[derive(Default)]
struct Tally {
    /// Requests seen, in the order they arrived.
    requests: u64,
    statuses: BTreeMap<u16, u64>,
    /// Answers per backend name the stub put on them.
    backends: BTreeMap<String, u64>,
    kv: HashMap<String, Vec<u8>>,
    puts: u64,
    /// The key of the write acknowledged but not stored.
    dropped: Option<String>,
}

type Handler = dyn Fn(&mut Tally, &Seen) -> Reply + Send + Sync;

struct Stub {
    url: String,
    tally: Arc<Mutex<Tally>>,
    stopping: Arc<AtomicBool>,
    port: u16,
}

impl Stub {
    fn start(handler: impl Fn(&mut Tally, &Seen) -> Reply + Send + Sync + 'static) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        let port = listener.local_addr().expect("stub addr").port();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stopping = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (t, s) = (Arc::clone(&tally), Arc::clone(&stopping));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (t, h) = (Arc::clone(&t), Arc::clone(&handler));
                std::thread::spawn(move || serve(stream, &t, &*h));
            }
        });
        Stub {
            url: format!("http://127.0.0.1:{port}"),
            tally,
            stopping,
            port,
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().expect("stub tally")
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves one keep-alive connection until the client closes it.
fn serve(stream: TcpStream, tally: &Mutex<Tally>, handler: &Handler) {
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("content-length");
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let seen = Seen { method, path, body };
        let reply = {
            let mut t = tally.lock().expect("stub tally");
            t.requests += 1;
            let reply = handler(&mut t, &seen);
            *t.statuses.entry(reply.status).or_default() += 1;
            if let Some((_, backend)) = reply
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("keel-backend"))
            {
                *t.backends.entry(backend.clone()).or_default() += 1;
            }
            reply
        };
        let mut head = format!(
            "HTTP/1.1 {} Stub\r\ncontent-length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&reply.body).is_err() {
            return;
        }
    }
}

/// A key/value stub: `PUT /v1/kv/{key}` stores and answers 200 (except the write
/// `drop_nth`, 1-based, which is answered 200 and not stored), `GET /v1/kv/{key}` reads.
fn kv_stub(drop_nth: Option<u64>) -> Stub {
    Stub::start(move |t, req| {
        let Some(key) = req.path.strip_prefix("/v1/kv/") else {
            return Reply::new(404, r#"{"error":"not_found"}"#);
        };
        match req.method.as_str() {
            "PUT" => {
                t.puts += 1;
                if Some(t.puts) == drop_nth {
                    t.dropped = Some(key.to_owned());
                } else {
                    t.kv.insert(key.to_owned(), req.body.clone());
                }
                Reply::new(200, &format!(r#"{{"key":"{key}","version":{}}}"#, t.puts))
            }
            "GET" => match t.kv.get(key) {
                Some(value) => Reply {
                    status: 200,
                    headers: Vec::new(),
                    body: value.clone(),
                },
                None => Reply::new(404, r#"{"error":"not_found","message":"no such key"}"#),
            },
            _ => Reply::new(405, r#"{"error":"method_not_allowed"}"#),
        }
    })
}

// ---------------------------------------------------------------------------------------

fn counts(map: &Value) -> BTreeMap<String, u64> {
    map.as_object()
        .expect("a JSON object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("a count")))
        .collect()
}

fn stub_statuses(t: &Tally) -> BTreeMap<String, u64> {
    t.statuses
        .iter()
        .map(|(s, n)| (s.to_string(), *n))
        .collect()
}

/// 200s, with a 503 `failover_in_progress` for every 10th request and a 404 for every
/// 7th: the report must count each kind as the stub answered it.
fn mixed_stub() -> Stub {
    Stub::start(|t, _req| match t.requests {
        n if n % 10 == 0 => Reply::new(
            503,
            r#"{"error":"failover_in_progress","message":"a failover is in progress"}"#,
        )
        .header("Retry-After", "1"),
        n if n % 7 == 0 => Reply::new(404, "nothing here"),
        _ => Reply::new(200, "hello"),
    })
}

#[test]
fn the_closed_loop_report_counts_exactly_what_the_server_saw() {
    let stub = mixed_stub();
    let url = format!("{}/hello", stub.url);
    let (out, report) = support::load_report(&[&url, "--concurrency", "4", "--requests", "500"]);
    assert!(out.success(), "{out}");
    let t = stub.tally();
    assert_eq!(t.requests, 500, "the stub saw exactly --requests");
    assert_eq!(report["requests"], 500, "{out}");
    assert_eq!(report["answered"], 500);
    assert_eq!(counts(&report["statuses"]), stub_statuses(&t));
    let (n503, n404) = (t.statuses[&503], t.statuses[&404]);
    assert_eq!(report["errors"], n503 + n404);
    assert_eq!(
        counts(&report["error_kinds"]),
        BTreeMap::from([
            ("404".to_owned(), n404),
            ("503 failover_in_progress".to_owned(), n503)
        ])
    );
    assert_eq!(report["latency"]["count"], 500);
    let timeline_total: u64 = report["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|row| row["requests"].as_u64().expect("requests"))
        .sum();
    assert_eq!(timeline_total, 500, "every request is in one second");
    // The same counts, for a person.
    assert!(
        out.stdout
            .contains(&format!("503 failover_in_progress   {n503:>10}")),
        "{out}"
    );
    assert!(out.stdout.contains("requests          500"), "{out}");
}

#[test]
fn the_open_loop_report_counts_exactly_what_the_server_saw() {
    let stub = mixed_stub();
    let (out, report) = support::load_report(&[&stub.url, "--rate", "200", "--duration", "1s"]);
    assert!(out.success(), "{out}");
    let t = stub.tally();
    assert_eq!(report["requests"], t.requests, "{out}");
    assert_eq!(counts(&report["statuses"]), stub_statuses(&t));
    // 200 a second for one second: the stub keeps up, so every ticket was sent.
    assert_eq!(t.requests + report["missed"].as_u64().expect("missed"), 200);
    assert_eq!(report["mode"], "rate");
    assert_eq!(report["latency_corrected"], true);
    assert!(
        out.stdout.contains("corrected for coordinated omission"),
        "{out}"
    );
}

#[test]
fn the_spread_per_backend_from_a_header_is_exact() {
    // Three answers from "svc-a" for every one from "svc-b", and every 9th names nobody.
    let stub = Stub::start(|t, _req| {
        let n = t.requests;
        let reply = Reply::new(200, "ok");
        match n {
            n if n % 9 == 0 => reply,
            n if n % 4 == 0 => reply.header("Keel-Backend", "svc-b"),
            _ => reply.header("Keel-Backend", "svc-a"),
        }
    });
    let (out, report) =
        support::load_report(&[&stub.url, "--concurrency", "3", "--requests", "400"]);
    assert!(out.success(), "{out}");
    let t = stub.tally();
    let spread: BTreeMap<String, u64> = support::spread_of(&report).into_iter().collect();
    assert_eq!(spread, t.backends, "{out}");
    let named: u64 = t.backends.values().sum();
    assert_eq!(report["spread_unnamed"], 400 - named);
    let a_share = t.backends["svc-a"] as f64 * 100.0 / named as f64;
    assert!(
        out.stdout.contains(&format!("{a_share:.2}%")),
        "the share is printed: {a_share:.2}%\n{out}"
    );
}

#[test]
fn the_spread_per_backend_from_a_json_field_is_exact() {
    let stub = Stub::start(|t, _req| {
        let backend = if t.requests % 3 == 0 { "s2" } else { "s1" };
        *t.backends.entry(backend.to_owned()).or_default() += 1;
        Reply::new(
            200,
            &format!(r#"{{"backend_id": "{backend}", "rows": [1, 2]}}"#),
        )
    });
    let (out, report) = support::load_report(&[
        &format!("{}/data", stub.url),
        "--concurrency",
        "2",
        "--requests",
        "300",
        "--spread-by",
        "json:backend_id",
    ]);
    assert!(out.success(), "{out}");
    let t = stub.tally();
    let spread = support::spread_of(&report);
    assert_eq!(
        spread,
        [
            ("s1".to_owned(), t.backends["s1"]),
            ("s2".to_owned(), t.backends["s2"])
        ],
        "{out}"
    );
    assert_eq!(t.backends["s2"], 100);
    assert!(out.stdout.contains("by JSON field backend_id"), "{out}");
}

#[test]
fn verify_catches_a_write_the_server_acknowledged_and_dropped() {
    let stub = kv_stub(Some(17));
    let (out, report) = support::load_report(&[
        &stub.url,
        "--concurrency",
        "4",
        "--requests",
        "60",
        "--write-ratio",
        "1",
        "--verify",
    ]);
    assert_eq!(out.status.code(), Some(3), "lost writes exit with 3\n{out}");
    assert!(
        out.stdout.contains("lost acknowledged writes: 1\n"),
        "{out}"
    );
    let dropped = stub
        .tally()
        .dropped
        .clone()
        .expect("the stub dropped a write");
    assert!(
        out.stdout.contains(&format!("lost: {dropped} is missing")),
        "the lost key is named\n{out}"
    );
    assert_eq!(report["writes"]["acknowledged"], 60);
    assert_eq!(report["verify"]["lost"], 1);
    assert_eq!(report["verify"]["confirmed"], 59);
    assert_eq!(report["verify"]["lost_writes"][0]["key"], dropped.as_str());
    assert_eq!(stub.tally().puts, 60);
}

#[test]
fn verify_finds_nothing_lost_when_the_server_keeps_every_write() {
    let stub = kv_stub(None);
    // Half writes, half reads of a key that does not exist (404s are errors, not writes).
    let (out, report) = support::load_report(&[
        &format!("{}/v1/kv/absent", stub.url),
        "--concurrency",
        "2",
        "--requests",
        "40",
        "--write-ratio",
        "0.5",
        "--verify",
    ]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains("lost acknowledged writes: 0\n"),
        "{out}"
    );
    assert_eq!(report["writes"]["sent"], 20);
    assert_eq!(report["verify"]["confirmed"], 20);
    assert_eq!(stub.tally().puts, 20);
}

#[test]
fn on_a_real_cluster_every_acknowledged_write_is_read_back() {
    let dir = support::tempdir();
    let up = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let primary = up.node_url(1);
    let (out, report) = support::load_report(&[
        &primary,
        "--concurrency",
        "4",
        "--requests",
        "300",
        "--write-ratio",
        "1",
        "--verify",
        "--monitor",
        &up.monitor_url,
    ]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains("lost acknowledged writes: 0\n"),
        "{out}"
    );
    assert_eq!(report["writes"]["acknowledged"], 300, "{out}");
    assert_eq!(report["verify"]["confirmed"], 300);
    assert_eq!(
        report["spread"][0]["name"], "app1",
        "Keel-Node names the primary"
    );
    // The writes are really there, under the run's keys, on the standby too.
    let (status, keys) = support::get_json(&format!("{}/v1/kv", up.node_url(2)));
    assert_eq!(status, support::StatusCode::OK);
    let prefix = format!("load-{}-", report["run_id"].as_str().expect("run id"));
    let ours = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["key"].as_str().is_some_and(|k| k.starts_with(&prefix)))
        .count();
    assert_eq!(ours, 300);
}

#[test]
fn through_a_failover_the_events_are_marked_and_no_acknowledged_write_is_lost() {
    let dir = support::tempdir();
    let up = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let primary = up.node_url(1);
    let plot = dir.path().join("run.svg");
    let plot_arg = plot.display().to_string();
    let killer = {
        let primary = primary.clone();
        let up_client = (up.monitor_url.clone(), up.token_file.display().to_string());
        std::thread::spawn(move || {
            // Kill the primary once the load has written a while.
            let written = support::wait_until(Duration::from_secs(15), || {
                let (_, health) = support::get_json(&format!("{primary}/health"));
                health["lsn"].as_u64().is_some_and(|lsn| lsn >= 100)
            });
            let killed = support::run_keel(&[
                "client",
                "--monitor",
                &up_client.0,
                "--token-file",
                &up_client.1,
                "kill-primary",
            ]);
            (written, killed)
        })
    };
    let (out, report) = support::load_report(&[
        &primary,
        "--rate",
        "150",
        "--duration",
        "6s",
        "--write-ratio",
        "1",
        "--verify",
        "--monitor",
        &up.monitor_url,
        "--plot",
        &plot_arg,
    ]);
    let (written, killed) = killer.join().expect("killer thread");
    assert!(written && killed.success(), "{killed}");
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains("lost acknowledged writes: 0\n"),
        "{out}"
    );
    let acknowledged = report["writes"]["acknowledged"].as_u64().expect("acks");
    assert!(acknowledged >= 100, "{out}");
    assert_eq!(report["verify"]["confirmed"], acknowledged);
    assert_eq!(
        report["verify"]["read_from"],
        up.node_url(2).as_str(),
        "read back from the new primary the monitor names"
    );
    let kinds: Vec<&str> = report["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"failover_done"), "{kinds:?}\n{out}");
    assert!(out.stdout.contains("monitor events"), "{out}");
    let svg = std::fs::read_to_string(&plot).expect("the plot is written");
    assert!(svg.starts_with("<svg"), "an SVG file");
    assert!(
        svg.contains("failover done app2"),
        "the event is marked on the plot"
    );
}

#[test]
fn bad_flags_and_targets_are_refused_with_a_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["http://127.0.0.1:1/", "--rate", "10", "--concurrency", "2"],
            "cannot be used with",
        ),
        (
            &["http://127.0.0.1:1/", "--duration", "2s", "--requests", "9"],
            "cannot be used with",
        ),
        (
            &["http://127.0.0.1:1/", "--duration", "fast"],
            "is not a duration",
        ),
        (
            &["http://127.0.0.1:1/", "--duration", "0s"],
            "--duration must be above 0",
        ),
        (
            &["http://127.0.0.1:1/", "--concurrency", "0"],
            "--concurrency must be from 1",
        ),
        (&["http://10.1.2.3:80/"], "--allow-remote"),
        (&["http://example.com/"], "is not on this machine"),
        (&["https://127.0.0.1/"], "an https:// target needs --tls-ca"),
        (
            &["http://127.0.0.1:1/", "--write-ratio", "2"],
            "--write-ratio must be from 0 to 1",
        ),
        (
            &["http://127.0.0.1:1/", "--verify"],
            "--verify needs writes",
        ),
        (
            &["http://127.0.0.1:1/", "--spread-by", "cookie:x"],
            "header:NAME or json:FIELD",
        ),
        (&["http://127.0.0.1:1/", "--connections", "4"], "--rate"),
        (
            &["http://127.0.0.1:1/", "-H", "no colon"],
            "is not a header",
        ),
        (
            &["http://127.0.0.1:1/", "--monitor", "http://192.0.2.1:8070"],
            "--allow-remote",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["load"];
        all.extend_from_slice(args);
        let out = support::run_keel(&all);
        assert!(!out.success(), "{args:?} must fail\n{out}");
        assert!(
            out.stderr.contains(expected),
            "{args:?}: expected {expected:?}\n{out}"
        );
        assert!(!out.stderr.contains("panicked"), "{args:?}\n{out}");
        assert!(
            out.stdout.is_empty(),
            "no report for a refused run: {args:?}\n{out}"
        );
    }
}

#[test]
fn a_target_that_is_down_is_one_clear_error() {
    let port = support::free_port();
    let out = support::run_keel(&["load", &format!("http://127.0.0.1:{port}/")]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("cannot connect to"), "{out}");
    assert!(out.stderr.contains("is the server running?"), "{out}");
}

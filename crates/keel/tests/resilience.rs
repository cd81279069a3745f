//! The fault-tolerance lab end to end: `keel flaky`'s modes and failure rate, `keel client
//! fetch`'s retries, breaker and fallback cache against it, and `keel service --redis`
//! with a real `redis-server` paused and resumed under its circuit breaker.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{KeelProcess, Output, StatusCode, free_port, run_keel, url_for, wait_until};

const HELLO: &str = "{\"message\": \"Hello from the service!\", \"data\": [1, 2, 3, 4, 5]}\n";
const DEGRADED: &str =
    "{\"message\": \"Service in degraded mode (fallback)\", \"data\": [1, 2, 3]}\n";
const UNAVAILABLE: &str = "{\"message\": \"Service Unavailable\"}\n";
const FALLBACK: &str = "{\"message\": \"Service unavailable (fallback)\"}\n";
const TOKEN: &str = "flaky-admin-token-0123456789";

/// A `keel flaky` on a free port, with an admin token.
struct Flaky {
    _proc: KeelProcess,
    url: String,
    _dir: tempfile::TempDir,
}

impl Flaky {
    fn start(extra: &[&str]) -> Flaky {
        let dir = support::tempdir();
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, TOKEN).expect("write token");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let token = token_file.display().to_string();
        let mut args = vec!["flaky", "--listen", &listen, "--token-file", &token];
        args.extend_from_slice(extra);
        let mut proc = KeelProcess::spawn("flaky", &args);
        let url = url_for(port);
        support::wait_for_health(&mut proc, &url);
        Flaky {
            _proc: proc,
            url,
            _dir: dir,
        }
    }

    /// `GET /`: status, content type and body.
    fn get(&self, client: &reqwest::blocking::Client) -> (StatusCode, String, String) {
        let resp = client
            .get(format!("{}/", self.url))
            .send()
            .unwrap_or_else(|e| panic!("GET {}/: {e}", self.url));
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, resp.text().expect("body"))
    }

    /// `PUT /admin/mode` with `body` and the given token: status and body.
    fn admin(&self, body: &str, token: &str) -> (StatusCode, String) {
        let resp = support::http_client()
            .put(format!("{}/admin/mode", self.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .expect("PUT /admin/mode");
        (resp.status(), resp.text().unwrap_or_default())
    }

    fn set(&self, body: &str) {
        let (status, answer) = self.admin(body, TOKEN);
        assert_eq!(status, StatusCode::OK, "{body}: {answer}");
    }

    /// The answers of `GET /` the service counted, by mode and status.
    fn answered(&self, mode: &str, status: u16) -> u64 {
        let (_, text) = support::get_text(&format!("{}/metrics", self.url));
        metric(
            &text,
            &format!("keel_flaky_requests_total{{mode=\"{mode}\",status=\"{status}\"}}"),
        )
    }

    fn fetch(&self, extra: &[&str]) -> Output {
        let url = format!("{}/", self.url);
        let mut args = vec!["client", "fetch", &url];
        args.extend_from_slice(extra);
        run_keel(&args)
    }
}

/// The value of a Prometheus sample (`name{labels}`), 0 when absent.
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A client that keeps its connection, for many requests in a row.
fn keepalive_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[test]
fn each_flaky_mode_answers_the_labs_status_and_body_exactly() {
    let flaky = Flaky::start(&["--failure-rate", "0"]);
    let client = keepalive_client();
    let json = "application/json".to_owned();
    assert_eq!(
        flaky.get(&client),
        (StatusCode::OK, json.clone(), HELLO.to_owned())
    );

    flaky.set(r#"{"mode": "fallback"}"#);
    assert_eq!(
        flaky.get(&client),
        (StatusCode::OK, json.clone(), DEGRADED.to_owned())
    );

    flaky.set(r#"{"mode": "failure"}"#);
    assert_eq!(
        flaky.get(&client),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json.clone(),
            UNAVAILABLE.to_owned()
        )
    );

    // Normal mode at a failure rate of 1: every answer is the lab's 503.
    flaky.set(r#"{"mode": "normal", "failure_rate": 1}"#);
    for _ in 0..20 {
        assert_eq!(
            flaky.get(&client),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json.clone(),
                UNAVAILABLE.to_owned()
            )
        );
    }
    assert_eq!(flaky.answered("normal", 503), 20);
    assert_eq!(flaky.answered("normal", 200), 1);

    // Changes need the token, and a bad one changes nothing.
    let (status, body) = flaky.admin(r#"{"mode": "fallback"}"#, "not-the-token-0123456789");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = flaky.admin(r#"{"failure_rate": 30}"#, TOKEN);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("probability from 0 to 1"), "{body}");
    let (_, health) = support::get_json(&format!("{}/health", flaky.url));
    assert_eq!(health["mode"], "normal");
    assert_eq!(health["failure_rate"], 1.0);
}

#[test]
fn the_service_mode_variable_sets_the_mode_as_in_the_lab() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(support::keel_bin())
        .args(["flaky", "--listen", &listen])
        .env("SERVICE_MODE", "failure")
        .env_remove("KEEL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keel flaky");
    let _guard = ChildGuard(child);
    let url = url_for(port);
    assert!(
        wait_until(support::STARTUP_TIMEOUT, || {
            support::http_client()
                .get(format!("{url}/health"))
                .send()
                .is_ok()
        }),
        "keel flaky did not come up"
    );
    assert_eq!(
        support::get_text(&format!("{url}/")),
        (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE.to_owned())
    );
    // Started without a token: changes are refused, not silently allowed.
    let resp = support::http_client()
        .put(format!("{url}/admin/mode"))
        .bearer_auth(TOKEN)
        .body(r#"{"mode": "normal"}"#)
        .send()
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[test]
fn a_seeded_flaky_service_replays_its_failures_exactly() {
    let seed = 42;
    let flaky = Flaky::start(&["--seed", "42"]);
    let client = keepalive_client();
    // --seed N: one draw per request from StdRng seeded with N, a 503 below the rate.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut failures = 0;
    for i in 0..300 {
        let fails = rng.random::<f64>() < 0.3;
        failures += u64::from(fails);
        let (status, _, body) = flaky.get(&client);
        if fails {
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
                "request {i}"
            );
        } else {
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, HELLO),
                "request {i}"
            );
        }
    }
    assert_eq!(flaky.answered("normal", 503), failures);
    assert_eq!(flaky.answered("normal", 200), 300 - failures);
}

#[test]
fn the_failure_rate_holds_within_binomial_bounds() {
    let flaky = Flaky::start(&[]);
    let client = keepalive_client();
    let n = 2000u32;
    let p = 0.3;
    let failures = (0..n)
        .filter(|_| flaky.get(&client).0 == StatusCode::SERVICE_UNAVAILABLE)
        .count() as f64;
    // Two-sided 99.99%: z = 3.891. A correct service lands outside once in 10,000 runs.
    let mean = f64::from(n) * p;
    let margin = 3.891 * (f64::from(n) * p * (1.0 - p)).sqrt();
    assert!(
        (mean - margin..=mean + margin).contains(&failures),
        "{failures} failures in {n} requests at a rate of {p}: expected {mean} ± {margin:.1}"
    );
    assert_eq!(flaky.answered("normal", 503), failures as u64);
}

#[test]
fn fetch_prints_every_attempt_and_ends_with_the_labs_fallback() {
    let flaky = Flaky::start(&["--mode", "failure"]);
    let out = flaky.fetch(&["--retries", "3", "--retry-delay", "100ms"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert_eq!(out.stdout, FALLBACK, "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "Attempt 1 failed: 503 Service Unavailable; retrying in 0.1 s",
            "Attempt 2 failed: 503 Service Unavailable; retrying in 0.1 s",
            "Attempt 3 failed: 503 Service Unavailable; retrying in 0.1 s",
            "Attempt 4 failed: 503 Service Unavailable; giving up: no attempts left",
            "No answer: 503 Service Unavailable (gave up after 4 attempts: no attempts left); \
             nothing cached, so answering with the fallback",
        ],
        "{out}"
    );
    assert_eq!(flaky.answered("failure", 503), 4, "one request per attempt");
}

#[test]
fn fetch_backs_off_exponentially_up_to_the_cap() {
    let flaky = Flaky::start(&["--mode", "failure"]);
    let out = flaky.fetch(&[
        "--retries",
        "4",
        "--retry-delay",
        "100ms",
        "--backoff",
        "exponential",
        "--max-delay",
        "300ms",
        "--jitter",
        "none",
        "--json",
    ]);
    let waits: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.split_once("retrying in ").map(|(_, w)| w))
        .collect();
    assert_eq!(waits, ["0.1 s", "0.2 s", "0.3 s", "0.3 s"], "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON line");
    assert_eq!(answer["source"], "fallback", "{out}");
    assert_eq!(answer["attempts"], 5, "{out}");
    assert_eq!(answer["body"]["message"], "Service unavailable (fallback)");
}

#[test]
fn fetch_returns_a_good_answer_as_the_server_sent_it() {
    let flaky = Flaky::start(&["--failure-rate", "0"]);
    let out = flaky.fetch(&[]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, HELLO, "{out}");
    assert_eq!(out.stderr, "", "nothing went wrong, nothing to say: {out}");
}

#[test]
fn fetch_serves_the_stale_cached_answer_when_every_attempt_fails() {
    let flaky = Flaky::start(&["--mode", "fallback"]);
    let cache = support::tempdir();
    let dir = cache.path().display().to_string();

    // First run: the degraded answer is recognised, and cached.
    let out = flaky.fetch(&["--fallback-cache", &dir]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, DEGRADED, "{out}");
    assert!(
        out.stderr.contains(
            "The service is in degraded mode (\"Service in degraded mode (fallback)\"): its answer is limited"
        ),
        "{out}"
    );

    // Then normal mode: the full answer replaces it.
    flaky.set(r#"{"mode": "normal", "failure_rate": 0}"#);
    let out = flaky.fetch(&["--fallback-cache", &dir]);
    assert_eq!((out.success(), out.stdout.as_str()), (true, HELLO), "{out}");

    // Total failure: every attempt fails, and the cached answer is served, said stale.
    flaky.set(r#"{"mode": "failure"}"#);
    let out = flaky.fetch(&[
        "--fallback-cache",
        &dir,
        "--retries",
        "2",
        "--retry-delay",
        "100ms",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert_eq!(out.stdout, HELLO, "{out}");
    let last = out.stderr.lines().last().unwrap_or_default();
    let age = last
        .strip_prefix(
            "No answer: 503 Service Unavailable (gave up after 3 attempts: no attempts left); \
             serving the cached answer from ",
        )
        .and_then(|rest| rest.strip_suffix(" s ago (stale)"))
        .and_then(|secs| secs.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("a stale answer with its age: {out}"));
    assert!((0.0..60.0).contains(&age), "{out}");
    assert_eq!(flaky.answered("failure", 503), 3);

    // The same, as JSON.
    let out = flaky.fetch(&["--fallback-cache", &dir, "--retries", "0", "--json"]);
    let answer: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON line");
    assert_eq!(answer["source"], "cache", "{out}");
    assert_eq!(answer["stale"], true, "{out}");
    // Older than at the previous run (which printed it rounded to a tenth).
    assert!(
        answer["age_s"].as_f64().is_some_and(|a| a >= age - 0.05),
        "{out}"
    );
    assert_eq!(
        answer["body"]["message"], "Hello from the service!",
        "{out}"
    );
}

#[test]
fn fetch_with_a_breaker_stops_calling_a_failing_service() {
    let flaky = Flaky::start(&["--mode", "failure"]);
    let out = flaky.fetch(&[
        "--retries",
        "0",
        "--breaker",
        "failures=2,open=1m",
        "--count",
        "5",
        "--interval",
        "0ms",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert_eq!(out.stdout, FALLBACK.repeat(5), "{out}");
    let port = flaky.url.rsplit(':').next().unwrap_or_default();
    assert!(
        out.stderr.contains(&format!(
            "breaker 127.0.0.1:{port}: closed -> open (2 consecutive failures)"
        )),
        "{out}"
    );
    let refused = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("Attempt 1 failed: circuit open, retry in "))
        .count();
    assert_eq!(refused, 3, "{out}");
    assert_eq!(
        flaky.answered("failure", 503),
        2,
        "only two requests were sent"
    );
}

#[test]
fn fetch_refuses_bad_flags_with_a_reason() {
    for (args, says) in [
        (vec!["ftp://127.0.0.1/"], "takes an http:// URL"),
        (
            vec!["http://127.0.0.1:1/", "--breaker", "rate=50"],
            "unknown breaker setting \"rate\"",
        ),
        (
            vec!["http://127.0.0.1:1/", "--breaker", "failure-rate=150"],
            "invalid failure_rate_threshold",
        ),
        (
            vec!["http://127.0.0.1:1/", "--max-delay", "2s"],
            "--max-delay caps --backoff exponential",
        ),
        (
            vec![
                "http://127.0.0.1:1/",
                "--backoff",
                "exponential",
                "--retry-delay",
                "2s",
                "--max-delay",
                "1s",
            ],
            "shorter than --retry-delay",
        ),
    ] {
        let mut all = vec!["client", "fetch"];
        all.extend_from_slice(&args);
        let out = run_keel(&all);
        assert!(!out.success(), "{args:?}: {out}");
        assert!(out.stderr.contains(says), "{args:?}: {out}");
    }
    let out = run_keel(&[
        "service",
        "--redis",
        "redis://127.0.0.1:1",
        "--data",
        "http://127.0.0.1:2",
    ]);
    assert!(
        !out.success() && out.stderr.contains("cannot be used with"),
        "{out}"
    );
}

#[test]
fn fetch_against_nothing_listening_says_it_cannot_connect() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let out = run_keel(&[
        "client",
        "fetch",
        &url,
        "--retries",
        "1",
        "--retry-delay",
        "100ms",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert_eq!(out.stdout, FALLBACK);
    assert!(
        out.stderr.starts_with(
            "Attempt 1 failed: cannot connect (connection refused); retrying in 0.1 s\n"
        ),
        "{out}"
    );
}

// --- Redis -------------------------------------------------------------------------------

/// A child process that is killed (even when stopped) and reaped when dropped.
struct ChildGuard(Child);

impl ChildGuard {
    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.0.id()).expect("pid fits in i32"))
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the child");
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real `redis-server` on a free port of 127.0.0.1, without persistence.
fn start_redis(dir: &Path) -> (ChildGuard, u16) {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-server is not installed: the Redis tests need it (scripts/test installs it with \
         apt-get install redis-server)"
    );
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let guard = ChildGuard(child);
    assert!(
        wait_until(Duration::from_secs(10), || redis_ping(port)),
        "redis-server did not answer PING on port {port}"
    );
    (guard, port)
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// `GET /` of the service: the visits line.
fn visits(url: &str) -> String {
    let (status, body) = support::get_text(&format!("{url}/"));
    assert_eq!(status, StatusCode::OK, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("visits: "))
        .unwrap_or_else(|| panic!("no visits line in {body:?}"))
        .to_owned()
}

/// The seconds in `… (circuit open, retry in 2.3 s)`.
fn retry_in(line: &str) -> Duration {
    let secs = line
        .split_once("retry in ")
        .and_then(|(_, rest)| rest.strip_suffix(" s)"))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no 'retry in' in {line:?}"));
    Duration::from_secs_f64(secs)
}

struct Counters {
    timeouts: u64,
    rejected: u64,
    to_half_open: u64,
    to_closed: u64,
}

fn counters(url: &str) -> Counters {
    let (_, text) = support::get_text(&format!("{url}/metrics"));
    Counters {
        timeouts: metric(
            &text,
            "keel_service_redis_timeouts_total{service=\"service1\"}",
        ),
        rejected: metric(
            &text,
            "keel_breaker_calls_total{breaker=\"redis\",outcome=\"rejected\"}",
        ),
        to_half_open: metric(
            &text,
            "keel_breaker_transitions_total{breaker=\"redis\",to=\"half_open\"}",
        ),
        to_closed: metric(
            &text,
            "keel_breaker_transitions_total{breaker=\"redis\",to=\"closed\"}",
        ),
    }
}

fn breaker_state(url: &str) -> String {
    let (_, health) = support::get_json(&format!("{url}/health"));
    health["breaker"]["state"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

#[test]
fn paused_redis_makes_one_request_wait_then_the_rest_fail_fast_until_it_recovers() {
    let dir = support::tempdir();
    let (redis, redis_port) = start_redis(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let mut service = KeelProcess::spawn(
        "service",
        &[
            "service",
            "--listen",
            &listen,
            "--redis",
            &redis_url,
            "--redis-breaker",
            "failures=1,open=3s,half-open=1",
        ],
    );
    let url = url_for(port);
    support::wait_for_health(&mut service, &url);

    for n in 1..=3 {
        assert_eq!(visits(&url), format!("{n} (redis {redis_url})"));
    }
    assert_eq!(breaker_state(&url), "closed");

    // Redis frozen: the first request waits out the 2 s timeout, the next ones are
    // refused by the open breaker without asking Redis.
    redis.signal(Signal::SIGSTOP);
    let first = visits(&url);
    assert_eq!(
        first,
        "The counter is temporarily disabled! (redis timed out after 2.0 s)"
    );
    let mut last = String::new();
    for _ in 0..4 {
        last = visits(&url);
        assert!(
            last.starts_with("The counter is temporarily disabled! (circuit open, retry in "),
            "{last}"
        );
    }
    let c = counters(&url);
    assert_eq!(
        (c.timeouts, c.rejected),
        (1, 4),
        "one request waited, four failed fast"
    );
    assert_eq!(breaker_state(&url), "open");
    let (_, health) = support::get_json(&format!("{url}/health"));
    assert_eq!(health["status"], "degraded");

    // After the open wait, one request probes Redis — still frozen, so it waits again and
    // the breaker opens again.
    std::thread::sleep(retry_in(&last) + Duration::from_millis(200));
    let probe = visits(&url);
    assert_eq!(
        probe,
        "The counter is temporarily disabled! (redis timed out after 2.0 s)"
    );
    let c = counters(&url);
    assert_eq!((c.timeouts, c.to_half_open), (2, 1));
    assert_eq!(breaker_state(&url), "open");

    // Redis back: after the open wait the probe succeeds and the counter is back.
    redis.signal(Signal::SIGCONT);
    let refused = visits(&url);
    assert!(refused.contains("circuit open"), "{refused}");
    std::thread::sleep(retry_in(&refused) + Duration::from_millis(200));
    let back = visits(&url);
    let count: u64 = back
        .strip_suffix(&format!(" (redis {redis_url})"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the counter is back: {back:?}"));
    // The two INCRs that timed out may have run once Redis resumed.
    assert!((4..=6).contains(&count), "{back}");
    assert_eq!(breaker_state(&url), "closed");
    let c = counters(&url);
    assert_eq!(
        (c.timeouts, c.rejected, c.to_half_open, c.to_closed),
        (2, 5, 2, 1)
    );
    assert_eq!(visits(&url), format!("{} (redis {redis_url})", count + 1));

    // Every transition is on the event stream, in order.
    let stream = support::read_events(&url, "trial calls succeeded");
    let events: Vec<serde_json::Value> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "breaker_open",
            "breaker_half_open",
            "breaker_open",
            "breaker_half_open",
            "breaker_closed"
        ],
        "{stream}"
    );
    assert_eq!(
        events[0]["message"],
        "breaker redis: closed -> open (1 consecutive failures)"
    );
    let ids: Vec<u64> = events.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert!(
        events
            .iter()
            .all(|e| e["at"].as_str().is_some_and(|a| a.ends_with('Z')))
    );
    drop(redis);
}

//! `keel client` against a real primary/standby pair: the seed's `-get_state`,
//! `-update -file` and `-kill-primary`, plus set/get/incr and the errors a person sees.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Output, StatusCode, TestNode};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A primary `app1` replicating synchronously to a standby `app2`, both with the admin
/// token, in a temp dir that also holds `keel-data/admin.token` (where `keel client`
/// looks by default when run in that dir).
struct Pair {
    dir: tempfile::TempDir,
    primary: TestNode,
    standby: TestNode,
}

impl Pair {
    fn start() -> Pair {
        let dir = support::tempdir();
        let token_dir = dir.path().join("keel-data");
        std::fs::create_dir_all(&token_dir).expect("create keel-data");
        let token_file = token_dir.join("admin.token");
        std::fs::write(&token_file, TOKEN).expect("write token");
        let token_arg = token_file.display().to_string();
        let standby = TestNode::standby(
            "app2",
            dir.path().join("app2"),
            &["--token-file", &token_arg],
        );
        let primary = TestNode::primary(
            "app1",
            dir.path().join("app1"),
            std::slice::from_ref(&standby.url),
            &["--token-file", &token_arg],
        );
        Pair {
            dir,
            primary,
            standby,
        }
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("keel-data").join("admin.token")
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

/// `keel client --node <node> <args…>`, run in `cwd` (a dir without `keel-data` unless
/// the test wants one).
fn client_in(cwd: &Path, node: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["client", "--node", node];
    all.extend_from_slice(args);
    support::run_keel_in(&all, env, Some(cwd))
}

fn client(node: &str, args: &[&str]) -> Output {
    let empty = support::tempdir();
    client_in(empty.path(), node, args, &[])
}

fn health_lsn(node: &TestNode) -> u64 {
    node.health()["lsn"].as_u64().expect("lsn in /health")
}

#[test]
fn update_prints_the_map_and_state_shows_it_on_both_nodes() {
    let pair = Pair::start();
    let file = pair.file(
        "update_file",
        "id=999\nname=Paola\n\n# the seed's example\n",
    );

    let out = client(
        &pair.primary.url,
        &["update", "--file", &file.display().to_string()],
    );
    assert!(out.success(), "{out}");
    assert!(out.stdout.starts_with("app1 (primary, epoch "), "{out}");
    assert!(out.stdout.contains("  id   = 999\n"), "{out}");
    assert!(out.stdout.contains("  name = Paola\n"), "{out}");

    // Sync replication: acknowledged means the standby has it.
    let out = client(&pair.primary.url, &["state", "standby"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.starts_with("app2 (standby, epoch "), "{out}");
    assert!(out.stdout.contains(&pair.standby.url), "{out}");
    assert!(out.stdout.contains("  name = Paola\n"), "{out}");

    // Asked through the standby, `state primary` finds the primary it names.
    let out = client(&pair.standby.url, &["state", "primary"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.starts_with("app1 (primary, "), "{out}");
    assert!(!out.stdout.contains("app2"), "{out}");

    let out = client(&pair.primary.url, &["--json", "state", "all"]);
    assert!(out.success(), "{out}");
    let nodes: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON output");
    let nodes = nodes.as_array().expect("an array of nodes");
    assert_eq!(nodes.len(), 2, "{out}");
    assert_eq!(nodes[0]["node"], "app1");
    assert_eq!(nodes[1]["node"], "app2");
    for node in nodes {
        assert_eq!(node["entries"]["id"], "999", "{out}");
        assert_eq!(node["entries"]["name"], "Paola", "{out}");
    }
}

#[test]
fn update_with_a_malformed_line_names_it_and_sends_nothing() {
    let pair = Pair::start();
    let file = pair.file(
        "bad_update",
        "id=1\n# fine\nthis line has no equals\nname=x\n",
    );
    let before = health_lsn(&pair.primary);

    let out = client(
        &pair.primary.url,
        &["update", "--file", &file.display().to_string()],
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains(&format!("{}:3:", file.display())),
        "the error names the file and line 3: {out}"
    );
    assert!(out.stderr.contains("nothing was sent"), "{out}");

    assert_eq!(health_lsn(&pair.primary), before, "nothing was written");
    assert_eq!(support::entries(&pair.primary.url), serde_json::json!({}));
}

#[test]
fn set_get_and_incr_round_trip_and_writes_to_a_standby_reach_the_primary() {
    let pair = Pair::start();

    // Sent to the standby: its 421 names the primary, and the client follows it once.
    let out = client(&pair.standby.url, &["set", "greeting=hello", "path=a/b=c"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("greeting = hello (version "), "{out}");
    assert!(out.stdout.contains("path = a/b=c (version "), "{out}");

    let out = client(&pair.primary.url, &["get", "greeting"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "hello\n");
    let out = client(&pair.standby.url, &["get", "path"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "a/b=c\n");

    let out = client(&pair.primary.url, &["get"]);
    assert!(out.success(), "{out}");
    let keys: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(keys, ["greeting", "path"], "{out}");

    let out = client(&pair.primary.url, &["get", "missing"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("missing"), "{out}");
    assert!(out.stderr.contains("404"), "{out}");

    let out = client(&pair.primary.url, &["incr", "visits", "--by", "5"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "5");
    let out = client(&pair.standby.url, &["incr", "visits"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "6");
    let out = client(&pair.primary.url, &["incr", "visits", "--by", "-2"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "4");
}

#[test]
fn a_bad_pair_is_refused_before_anything_is_sent() {
    let pair = Pair::start();
    let before = health_lsn(&pair.primary);
    let out = client(&pair.primary.url, &["set", "good=1", "no-equals-sign"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("no-equals-sign"), "{out}");
    assert!(out.stderr.contains("nothing was sent"), "{out}");
    assert_eq!(health_lsn(&pair.primary), before, "nothing was written");
}

#[test]
fn nothing_listening_gives_a_message_that_says_what_to_do() {
    let url = support::url_for(support::free_port());
    let out = client(&url, &["state"]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains(&format!("cannot reach {url}: connection refused")),
        "{out}"
    );
    assert!(out.stderr.contains("keel up"), "{out}");
}

#[test]
fn kill_primary_with_a_wrong_token_is_refused_and_the_primary_lives() {
    let mut pair = Pair::start();
    let empty = support::tempdir();
    let out = client_in(
        empty.path(),
        &pair.standby.url,
        &["kill-primary"],
        &[("KEEL_TOKEN", "not-the-token-but-long-enough")],
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains("was refused by app1: check --token-file or KEEL_TOKEN"),
        "{out}"
    );
    assert!(pair.primary.proc.is_running());
    assert_eq!(pair.primary.health()["role"], "primary");
}

#[test]
fn kill_primary_without_a_token_says_where_to_find_one() {
    let pair = Pair::start();
    let empty = support::tempdir();
    let out = client_in(empty.path(), &pair.primary.url, &["kill-primary"], &[]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("no admin token"), "{out}");
    assert!(out.stderr.contains("--token-file"), "{out}");
}

#[test]
fn kill_primary_ends_the_primary_process_and_the_standby_keeps_its_data() {
    let mut pair = Pair::start();
    let out = client(&pair.primary.url, &["set", "kept=yes"]);
    assert!(out.success(), "{out}");

    // Through the standby, with the token found in ./keel-data/admin.token.
    let out = client_in(pair.dir.path(), &pair.standby.url, &["kill-primary"], &[]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("killed app1"), "{out}");

    let status = pair
        .primary
        .proc
        .wait_timeout(Duration::from_secs(5))
        .expect("the primary process ended");
    assert!(!status.success(), "killed, not a clean exit: {status:?}");
    assert!(pair.standby.proc.is_running());

    // The seed's `-get_state=standby` after the kill: the standby still shows the data.
    let out = client(&pair.standby.url, &["get", "kept"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "yes\n");
    let out = client(&pair.standby.url, &["state", "standby"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.starts_with("app2 (standby"), "{out}");

    // And the token file flag works too: a second kill finds no primary to kill.
    let token = pair.token_file().display().to_string();
    let out = client(&pair.primary.url, &["--token-file", &token, "kill-primary"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("cannot reach"), "{out}");
    let (status, _) = support::get_json(&format!("{}/health", pair.standby.url));
    assert_eq!(status, StatusCode::OK);
}

// ----- through the monitor (`keel up`) -----

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use support::KeelUp;

fn tier(nodes: u16) -> (tempfile::TempDir, KeelUp) {
    let dir = support::tempdir();
    let up = KeelUp::start(&dir.path().join("keel-data"), nodes, &[]);
    (dir, up)
}

#[test]
fn the_client_finds_the_primary_through_the_monitor() {
    let (_dir, up) = tier(2);
    let out = up.client(&["set", "greeting=hello"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("greeting = hello (version "), "{out}");
    let out = up.client(&["get", "greeting"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "hello\n");

    let out = up.client(&["state", "all"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.starts_with(&format!(
            "monitor {}: epoch 1, primary app1, no failover in progress",
            up.monitor_url
        )),
        "{out}"
    );
    assert!(out.stdout.contains("app1 (primary, epoch 1"), "{out}");
    assert!(out.stdout.contains("app2 (standby, epoch 1"), "{out}");

    let out = up.client(&["cluster"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("sync, promotable"), "{out}");
    let out = up.client(&["--json", "cluster"]);
    assert!(out.success(), "{out}");
    let view: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON view");
    assert_eq!(view["primary"]["node"], "app1", "{out}");
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(2), "{out}");
}

#[test]
fn writes_ride_through_a_killed_primary_without_changing_arguments() {
    let (_dir, up) = tier(2);
    let up = Arc::new(up);
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<(u32, Output)>>> = Arc::default();
    let writer = {
        let (up, stop, outcomes) = (up.clone(), stop.clone(), outcomes.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let pair = format!("k{i}={i}");
                let out = up.client(&["set", &pair]);
                outcomes.lock().expect("outcomes").push((i, out));
            }
        })
    };
    let acked = |outcomes: &Mutex<Vec<(u32, Output)>>| {
        outcomes
            .lock()
            .expect("outcomes")
            .iter()
            .filter(|(_, o)| o.success())
            .count()
    };
    assert!(support::wait_until(Duration::from_secs(20), || acked(
        &outcomes
    ) >= 3));

    let out = up.client(&["kill-primary"]);
    assert!(out.success(), "{out}");
    let before = outcomes.lock().expect("outcomes").len();
    assert!(
        support::wait_until(Duration::from_secs(20), || up.primary().as_deref()
            == Some("app2")),
        "{}",
        up.view()
    );
    // Writes started after the new primary took over must succeed, with the same flags.
    assert!(
        support::wait_until(Duration::from_secs(30), || {
            let all = outcomes.lock().expect("outcomes");
            all.len() > before + 3
                && all[before + 1..]
                    .iter()
                    .rev()
                    .take(3)
                    .all(|(_, o)| o.success())
        }),
        "{:#?}",
        outcomes
            .lock()
            .expect("outcomes")
            .iter()
            .map(|(i, o)| format!("{i}: {o}"))
            .collect::<Vec<_>>()
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");

    let all = outcomes.lock().expect("outcomes");
    // Not asserted (it depends on timing), but worth seeing when the test is run by hand.
    let rode = all
        .iter()
        .filter(|(_, o)| o.stderr.contains("retrying in"))
        .count();
    eprintln!(
        "{} writes, {rode} of them retried through the failover",
        all.len()
    );
    for (i, out) in all.iter() {
        if out.success() {
            // Acknowledged means kept, on the new primary too.
            let value = support::get_text(&format!("{}/v1/kv/k{i}", up.node_url(2)));
            assert_eq!(
                value,
                (StatusCode::OK, i.to_string()),
                "k{i} was acknowledged: {out}"
            );
        } else {
            assert!(
                out.stderr.contains("gave up after") || out.stderr.contains("may or may not"),
                "a failed write says what happened: {out}"
            );
        }
        // Every note the client printed on the way is one of its one-line explanations.
        for line in out.stderr.lines() {
            assert!(
                line.contains("retrying in")
                    || line.contains("gave up after")
                    || line.starts_with("keel: "),
                "unexpected stderr line {line:?} in {out}"
            );
        }
    }
}

#[test]
fn failover_to_app2_moves_the_primary_and_writes_follow() {
    let (_dir, up) = tier(2);
    let out = up.client(&["failover", "--to", "app2"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("switchover to app2 requested"), "{out}");
    assert!(out.stdout.contains("monitor  failover done: app2"), "{out}");
    assert!(
        out.stdout.contains("app2 is the primary now (epoch "),
        "{out}"
    );
    assert_eq!(up.primary().as_deref(), Some("app2"));

    let out = up.client(&["set", "after=switchover"]);
    assert!(out.success(), "{out}");
    assert_eq!(
        support::get_text(&format!("{}/v1/kv/after", up.node_url(2))),
        (StatusCode::OK, "switchover".to_owned())
    );

    // The best promotable standby, once app1 has caught up: back to app1.
    assert!(
        support::wait_until(Duration::from_secs(20), || up.promotable("app1")),
        "{}",
        up.view()
    );
    let out = up.client(&["failover"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("app1 is the primary now"), "{out}");
}

#[test]
fn failover_refusals_say_why() {
    let (_dir, up) = tier(2);
    let out = up.client_env(
        &["failover", "--to", "app2"],
        &[("KEEL_TOKEN", "not-the-token-but-long-enough")],
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "the admin token (from KEEL_TOKEN) was refused by the monitor at {}",
            up.monitor_url
        )),
        "{out}"
    );

    let out = up.client(&["failover", "--to", "app1"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("no_promotable_standby"), "{out}");
    assert!(out.stderr.contains("app1"), "{out}");
    assert_eq!(up.primary().as_deref(), Some("app1"), "nothing moved");
}

#[test]
fn a_named_monitor_that_does_not_answer_is_an_error_that_says_what_to_do() {
    let url = support::url_for(support::free_port());
    let empty = support::tempdir();
    let out = support::run_keel_in(
        &["client", "--monitor", &url, "set", "a=1"],
        &[],
        Some(empty.path()),
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "cannot reach the monitor at {url}: connection refused"
        )),
        "{out}"
    );
    assert!(out.stderr.contains("--node"), "{out}");
}

// ----- the retry policy, against a scripted server -----

/// A server that answers every request with the next of `answers` (the last one
/// repeated), closing each connection, and counts the requests.
struct Scripted {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl Scripted {
    fn start(answers: Vec<String>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = support::url_for(listener.local_addr().expect("addr").port());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let n = count.fetch_add(1, Ordering::SeqCst);
                let answer = &answers[n.min(answers.len() - 1)];
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        Scripted { url, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn http(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nKeel-Node: app1\r\nKeel-Role: primary\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

const UNKNOWN: &str = r#"{"error":"replication_timeout","message":"no sync standby confirmed the write in time; its outcome is unknown","written":"unknown","lsn":7}"#;

#[test]
fn an_increment_whose_outcome_is_unknown_is_reported_not_retried() {
    let server = Scripted::start(vec![http(
        "503 Service Unavailable",
        "Retry-After: 1\r\n",
        UNKNOWN,
    )]);
    let out = client(&server.url, &["incr", "visits"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("the outcome is unknown"), "{out}");
    assert!(out.stderr.contains("not sent again"), "{out}");
    assert_eq!(server.requests(), 1, "sent exactly once: {out}");
}

#[test]
fn a_put_whose_outcome_is_unknown_is_sent_again_and_says_so() {
    let server = Scripted::start(vec![
        http("503 Service Unavailable", "", UNKNOWN),
        http("200 OK", "", r#"{"key":"a","version":8}"#),
    ]);
    let out = client(&server.url, &["set", "a=1"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stderr
            .contains("the outcome is unknown (replication_timeout)"),
        "{out}"
    );
    assert!(out.stderr.contains("sending it again is safe"), "{out}");
    assert!(out.stdout.contains("a = 1 (version 8)"), "{out}");
    assert_eq!(server.requests(), 2);
}

#[test]
fn a_failover_in_progress_is_waited_out_honouring_retry_after() {
    let busy = r#"{"error":"failover_in_progress","message":"a failover is in progress","promoting":"app2"}"#;
    let server = Scripted::start(vec![
        http("503 Service Unavailable", "Retry-After: 1\r\n", busy),
        http("200 OK", "", r#"{"key":"a","version":9}"#),
    ]);
    let out = client(&server.url, &["set", "a=1"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stderr
            .contains("failover in progress (promoting app2); retrying in 1.0 s"),
        "Retry-After: 1 is the least it waits: {out}"
    );
    assert_eq!(server.requests(), 2);

    // And it gives up when --retry-for is shorter than the wait the server asks for.
    let server = Scripted::start(vec![http(
        "503 Service Unavailable",
        "Retry-After: 1\r\n",
        busy,
    )]);
    let out = client(&server.url, &["--retry-for", "500ms", "set", "a=1"]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("failover in progress (promoting app2)"),
        "{out}"
    );
    assert!(out.stderr.contains("gave up after"), "{out}");
    assert_eq!(server.requests(), 1);
}

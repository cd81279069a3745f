//! Synchronous replication between real `keel node` processes: what a writer is promised,
//! and what survives kills and restarts.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use keel_core::{Epoch, LogPos, Lsn};
use keel_node::repl::frame::{self, ToPrimary, ToStandby};
use keel_store::{LogEntry, Op};
use reqwest::StatusCode;
use support::{TestNode, get_json, http_client, put_kv, tempdir, wait_until};

/// A primary and one sync standby, each in its own directory under `root`.
fn pair(root: &tempfile::TempDir, extra: &[&str]) -> (TestNode, TestNode) {
    let standby = TestNode::standby("app2", root.path().join("app2"), extra);
    let primary = TestNode::primary(
        "app1",
        root.path().join("app1"),
        std::slice::from_ref(&standby.url),
        extra,
    );
    wait_for_streaming(&primary);
    (primary, standby)
}

fn wait_for_streaming(primary: &TestNode) {
    let streaming = wait_until(Duration::from_secs(10), || {
        let (status, h) = get_json(&format!("{}/health", primary.url));
        status == StatusCode::OK
            && h["standbys"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["state"] == "streaming"))
    });
    assert!(streaming, "standbys never streaming: {}", primary.health());
}

fn lsn_header(resp: &reqwest::blocking::Response) -> u64 {
    resp.headers()
        .get("keel-lsn")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("every answer carries Keel-Lsn")
}

fn get_value(node: &str, key: &str) -> Option<String> {
    let resp = http_client()
        .get(format!("{node}/v1/kv/{key}"))
        .send()
        .expect("GET kv");
    match resp.status() {
        StatusCode::OK => Some(resp.text().expect("body")),
        StatusCode::NOT_FOUND => None,
        other => panic!("GET {node}/v1/kv/{key}: {other}"),
    }
}

/// The whole key/value space of a node: key to (version, value).
fn all_kv(node: &str) -> BTreeMap<String, (u64, String)> {
    let (status, list) = get_json(&format!("{node}/v1/kv"));
    assert_eq!(status, StatusCode::OK);
    let mut out = BTreeMap::new();
    for item in list["keys"].as_array().expect("keys") {
        let key = item["key"].as_str().expect("key").to_owned();
        let value = get_value(node, &key).expect("listed key exists");
        out.insert(key, (item["version"].as_u64().expect("version"), value));
    }
    out
}

#[test]
fn an_update_is_on_the_standby_before_the_writer_is_answered() {
    let root = tempdir();
    let (primary, standby) = pair(&root, &["--sync-timeout", "500ms"]);
    for i in 0..100 {
        let resp = put_kv(&primary.url, &format!("k{i}"), &format!("v{i}"));
        assert_eq!(resp.status(), StatusCode::OK);
        let write_lsn = lsn_header(&resp);
        // The very first read after the answer, on the standby, already has it.
        let read = http_client()
            .get(format!("{}/v1/kv/k{i}", standby.url))
            .send()
            .expect("GET");
        assert!(
            lsn_header(&read) >= write_lsn,
            "standby behind the acknowledged write {write_lsn}"
        );
        assert_eq!(read.text().expect("body"), format!("v{i}"));
    }
    // The seed's update: the entries map, checked the same way.
    let (status, map) = support::patch_entries(
        &primary.url,
        &serde_json::json!({"id": "999", "name": "Paola"}),
    );
    assert_eq!(status, StatusCode::OK, "{map}");
    assert_eq!(support::entries(&standby.url)["name"], "Paola");

    // And the answer really waits for the standby: frozen, it gets no acknowledgement.
    standby.proc.stop();
    let resp = put_kv(&primary.url, "while-frozen", "x");
    let status = resp.status();
    let body: serde_json::Value = resp.json().expect("json");
    standby.proc.cont();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "replication_timeout", "{body}");
    assert_eq!(body["written"], "unknown");
}

#[test]
fn kill9_primary_under_8_writers_then_restart_keeps_every_acknowledged_write() {
    let root = tempdir();
    let (mut primary, standby) = pair(&root, &[]);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (url, acked, stop) = (primary.url.clone(), acked.clone(), stop.clone());
            thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("client");
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (key, value) = (format!("w{w}-{n}"), format!("value-{w}-{n}"));
                    n += 1;
                    match client
                        .put(format!("{url}/v1/kv/{key}"))
                        .body(value.clone())
                        .send()
                    {
                        Ok(r) if r.status() == StatusCode::OK => {
                            acked.lock().expect("lock").push((key, value))
                        }
                        // Refused connections while the primary is down: try the next key.
                        _ => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();
    let count = || acked.lock().expect("lock").len();
    assert!(
        wait_until(Duration::from_secs(20), || count() >= 400),
        "writers stuck at {}",
        count()
    );
    primary.kill9();
    let at_kill = count();
    primary.restart();
    assert!(
        wait_until(Duration::from_secs(20), || count() >= at_kill + 400),
        "no writes after restart"
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer thread");
    }
    wait_for_streaming(&primary);
    let acked = acked.lock().expect("lock").clone();
    let on_primary = all_kv(&primary.url);
    let on_standby = all_kv(&standby.url);
    for (key, value) in &acked {
        assert_eq!(
            on_primary.get(key).map(|(_, v)| v),
            Some(value),
            "{key} lost on the primary"
        );
        assert_eq!(
            on_standby.get(key).map(|(_, v)| v),
            Some(value),
            "{key} lost on the standby"
        );
    }
    assert_eq!(on_primary, on_standby, "the nodes disagree");
}

#[test]
fn kill9_standby_gives_bounded_503s_never_an_unreplicated_ack_then_it_catches_up() {
    let root = tempdir();
    let (primary, mut standby) = pair(&root, &["--sync-timeout", "300ms"]);
    assert_eq!(put_kv(&primary.url, "before", "1").status(), StatusCode::OK);
    standby.kill9();
    for i in 0..5 {
        let resp = put_kv(&primary.url, &format!("down{i}"), "x");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key("retry-after"));
        let body: serde_json::Value = resp.json().expect("json");
        let code = body["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            code == "sync_standby_unavailable" || code == "replication_timeout",
            "{body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("app2")),
            "names the standby: {body}"
        );
    }
    standby.restart();
    wait_for_streaming(&primary);
    let resp = put_kv(&primary.url, "after", "2");
    assert_eq!(resp.status(), StatusCode::OK);
    // Caught up: the standby holds exactly what the primary holds, at the same position.
    assert_eq!(all_kv(&standby.url), all_kv(&primary.url));
    assert_eq!(standby.health()["lsn"], primary.health()["lsn"]);
}

/// A read on the primary never shows a write its sync standby lacks: cut off, the
/// primary could be replaced by that standby, and the write undone after a client saw it
/// (found by `keel sim`, seed 206). The read waits for the standby's ack, and says so
/// with a 503 if it does not come.
#[test]
fn a_read_shows_a_write_only_once_the_sync_standby_has_it() {
    let root = tempdir();
    let (primary, standby) = pair(&root, &["--sync-timeout", "300ms"]);
    assert_eq!(put_kv(&primary.url, "k", "1").status(), StatusCode::OK);
    standby.proc.stop();
    let resp = put_kv(&primary.url, "k", "2");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = resp.json().expect("json");
    assert_eq!(body["error"], "replication_timeout", "{body}");
    assert_eq!(body["written"], "unknown", "{body}");

    // Durable on the primary alone: not shown.
    let resp = http_client()
        .get(format!("{}/v1/kv/k", primary.url))
        .send()
        .expect("GET kv");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().expect("json");
    assert_eq!(body["error"], "not_replicated", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("sync standbys")),
        "says why: {body}"
    );

    // Once the standby has it, the read shows it.
    standby.proc.cont();
    let shown = wait_until(Duration::from_secs(10), || {
        let resp = http_client()
            .get(format!("{}/v1/kv/k", primary.url))
            .send()
            .expect("GET kv");
        resp.status() == StatusCode::OK && resp.text().is_ok_and(|t| t == "2")
    });
    assert!(
        shown,
        "the write never became readable: {}",
        primary.health()
    );
    assert_eq!(get_value(&standby.url, "k").as_deref(), Some("2"));
}

/// Reads an answer's head, byte by byte so that nothing after it is taken.
fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).expect("read head");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Opens a replication stream by hand, the way a primary would.
fn open_stream(url: &str, epoch: u64) -> (u16, String, TcpStream) {
    let addr = url.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        tcp,
        "GET /v1/replication HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\nUpgrade: keel-replication/2\r\nKeel-Epoch: {epoch}\r\nKeel-Node: rogue\r\n\r\n"
    )
    .expect("send upgrade");
    let head = read_head(&mut tcp);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = String::new();
    if status != 101 {
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut buf = vec![0u8; len];
        tcp.read_exact(&mut buf).expect("body");
        body = String::from_utf8_lossy(&buf).into_owned();
    }
    (status, body, tcp)
}

fn send_frame(tcp: &mut TcpStream, f: &ToStandby) {
    let bytes = frame::encode(f).expect("encode");
    tcp.write_all(&(bytes.len() as u32).to_be_bytes())
        .expect("len");
    tcp.write_all(&bytes).expect("frame");
}

fn read_frame(tcp: &mut TcpStream) -> Option<ToPrimary> {
    let mut len = [0u8; 4];
    tcp.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    tcp.read_exact(&mut buf).ok()?;
    Some(frame::decode(&buf).expect("decode"))
}

#[test]
fn a_standby_refuses_frames_from_an_older_epoch() {
    let root = tempdir();
    let standby = TestNode::standby("app2", root.path().join("app2"), &[]);
    let mut primary = TestNode::primary(
        "app1",
        root.path().join("app1"),
        std::slice::from_ref(&standby.url),
        &["--epoch", "3"],
    );
    wait_for_streaming(&primary);
    assert_eq!(put_kv(&primary.url, "real", "yes").status(), StatusCode::OK);
    primary.kill9();
    let before = standby.health();
    assert_eq!(before["epoch"], 3);
    let last = LogPos {
        epoch: Epoch(3),
        lsn: Lsn(before["lsn"].as_u64().expect("lsn")),
    };
    let entry = |epoch: u64, key: &str| LogEntry {
        pos: LogPos {
            epoch: Epoch(epoch),
            lsn: last.lsn.next(),
        },
        op: Op::Put {
            key: key.into(),
            value: b"forged".to_vec(),
        },
    };

    // An older epoch is refused at the door, with the newer epoch named.
    let (status, body, _) = open_stream(&standby.url, 2);
    assert_eq!(status, 409, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (body["error"].as_str(), body["epoch"].as_u64()),
        (Some("stale_epoch"), Some(3))
    );

    // Inside a stream of the current epoch, a frame stamped with an older one is refused
    // too: the standby answers `Stale` and closes, and writes nothing.
    let (status, _, mut tcp) = open_stream(&standby.url, 3);
    assert_eq!(status, 101);
    assert!(matches!(
        read_frame(&mut tcp),
        Some(ToPrimary::Hello { .. })
    ));
    send_frame(
        &mut tcp,
        &ToStandby::Append {
            epoch: Epoch(2),
            entries: vec![entry(2, "old")],
        },
    );
    assert_eq!(
        read_frame(&mut tcp),
        Some(ToPrimary::Stale { epoch: Epoch(3) })
    );
    assert_eq!(read_frame(&mut tcp), None, "the stream is closed");
    assert_eq!(get_value(&standby.url, "old"), None);
    assert_eq!(standby.health()["lsn"], before["lsn"]);

    // The same frame in the current epoch is taken: it was the epoch, not the frame.
    let (_, _, mut tcp) = open_stream(&standby.url, 3);
    assert!(matches!(
        read_frame(&mut tcp),
        Some(ToPrimary::Hello { .. })
    ));
    send_frame(
        &mut tcp,
        &ToStandby::Append {
            epoch: Epoch(3),
            entries: vec![entry(3, "current")],
        },
    );
    assert!(matches!(read_frame(&mut tcp), Some(ToPrimary::Ack { .. })));
    assert_eq!(
        get_value(&standby.url, "current").as_deref(),
        Some("forged")
    );
}

#[test]
fn a_deposed_primary_that_comes_back_is_fenced() {
    let root = tempdir();
    let standby = TestNode::standby("app2", root.path().join("app2"), &[]);
    let _new_primary = TestNode::primary(
        "app3",
        root.path().join("app3"),
        std::slice::from_ref(&standby.url),
        &["--epoch", "5"],
    );
    // An old primary of epoch 1 is pointed at the same standby: it must step down.
    let old = TestNode::primary(
        "app1",
        root.path().join("app1"),
        std::slice::from_ref(&standby.url),
        &["--sync-timeout", "300ms"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || old.health()["fenced_by"] == 5),
        "{}",
        old.health()
    );
    assert_eq!(old.health()["role"], "standby");
    let resp = put_kv(&old.url, "split-brain", "x");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = resp.json().expect("json");
    assert_eq!(body["error"], "fenced", "{body}");
    assert_eq!(get_value(&standby.url, "split-brain"), None);
}

#[test]
fn bad_input_gets_a_4xx_that_says_what_was_wrong_and_changes_nothing() {
    let root = tempdir();
    let token_file = root.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123").expect("token");
    let token_arg = token_file.display().to_string();
    let standby = TestNode::standby(
        "app2",
        root.path().join("app2"),
        &["--token-file", &token_arg],
    );
    let primary = TestNode::primary(
        "app1",
        root.path().join("app1"),
        std::slice::from_ref(&standby.url),
        &["--token-file", &token_arg],
    );
    wait_for_streaming(&primary);
    assert_eq!(put_kv(&primary.url, "k", "v").status(), StatusCode::OK);
    let before = (
        support::entries(&primary.url),
        all_kv(&primary.url),
        primary.health()["lsn"].clone(),
    );
    let client = http_client();
    let entries_url = format!("{}/v1/entries", primary.url);
    let check = |resp: reqwest::blocking::Response, status: u16, code: &str, says: &str| {
        assert_eq!(resp.status().as_u16(), status);
        let body: serde_json::Value = resp.json().expect("error bodies are JSON");
        assert_eq!(body["error"], code, "{body}");
        let message = body["message"].as_str().expect("message");
        assert!(
            message.contains(says),
            "{message:?} should mention {says:?}"
        );
    };
    let json = |body: &str| {
        client
            .patch(&entries_url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .expect("send")
    };
    check(json("{\"id\": "), 400, "bad_json", "not valid JSON");
    check(json("{\"id\": 5}"), 400, "bad_json", "must be a string");
    check(json("[\"id\"]"), 400, "bad_json", "object");
    let lines = client
        .patch(&entries_url)
        .header("content-type", "text/plain")
        .body("id=1\nname=ok\nno equals sign here\n")
        .send()
        .expect("send");
    check(lines, 400, "bad_update_line", "line 3");
    let form = client
        .patch(&entries_url)
        .body("id=1")
        .send()
        .expect("send");
    check(form, 415, "unsupported_media_type", "text/plain");
    let big = client
        .put(format!("{}/v1/kv/big", primary.url))
        .body(vec![b'x'; (1 << 20) + 1])
        .send()
        .expect("send");
    check(big, 413, "body_too_large", "limit");
    // A request that claims a member's signature may bring more (a piece of a slot
    // move), but a claim that is not one writes nothing, and past 2 MiB it is refused
    // as well.
    let forged = client
        .put(format!("{}/v1/kv/big", primary.url))
        .header("keel-auth", "not a signature")
        .body(vec![b'x'; 3 << 19])
        .send()
        .expect("send");
    assert_eq!(forged.status().as_u16(), 401);
    let forged = client
        .put(format!("{}/v1/kv/big", primary.url))
        .header("keel-auth", "not a signature")
        .body(vec![b'x'; (2 << 20) + 1])
        .send()
        .expect("send");
    check(forged, 413, "body_too_large", "2097152");
    check(
        client
            .get(format!("{}/v1/kv/big", primary.url))
            .send()
            .expect("send"),
        404,
        "not_found",
        "big",
    );
    check(
        client
            .get(format!("{}/v1/nope", primary.url))
            .send()
            .expect("send"),
        404,
        "no_route",
        "/v1/nope",
    );
    check(
        client.delete(&entries_url).send().expect("send"),
        405,
        "method_not_allowed",
        "DELETE",
    );
    let bad_by = client
        .post(format!("{}/v1/counters/c/incr?by=lots", primary.url))
        .send()
        .expect("send");
    check(bad_by, 400, "bad_query", "?by=N");
    let bad_if = client
        .put(format!("{}/v1/kv/k", primary.url))
        .header("if-match", "latest")
        .body("v2")
        .send()
        .expect("send");
    check(bad_if, 400, "bad_precondition", "version number");
    let cas = client
        .put(format!("{}/v1/kv/k", primary.url))
        .header("if-match", "\"999\"")
        .body("v2")
        .send()
        .expect("send");
    check(cas, 412, "version_mismatch", "version");
    let kill = |auth: Option<&str>| {
        let mut req = client.post(format!("{}/admin/kill", primary.url));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send().expect("send")
    };
    check(kill(None), 401, "unauthorized", "Bearer");
    check(
        kill(Some("Bearer wrong-token-wrong-token")),
        401,
        "unauthorized",
        "token",
    );
    // Nothing above changed anything, on either node.
    let after = (
        support::entries(&primary.url),
        all_kv(&primary.url),
        primary.health()["lsn"].clone(),
    );
    assert_eq!(before, after);
    assert_eq!(all_kv(&standby.url), after.1);
    assert!(primary.proc.pid() > 0);
    assert!(
        support::pid_alive(primary.proc.pid()),
        "a wrong token must not kill"
    );
}

#[test]
fn both_nodes_restarted_recover_even_after_the_log_was_truncated_into_a_snapshot() {
    let root = tempdir();
    let retain = ["--log-retain", "40"];
    let (mut primary, mut standby) = pair(&root, &retain);
    let client = http_client();
    for i in 0..200 {
        assert_eq!(
            put_kv(&primary.url, &format!("k{}", i % 70), &format!("v{i}")).status(),
            StatusCode::OK
        );
        if i % 10 == 0 {
            let r = client
                .post(format!("{}/v1/counters/visits/incr", primary.url))
                .send()
                .expect("incr");
            assert_eq!(r.status(), StatusCode::OK);
        }
    }
    let (s, _) =
        support::patch_entries(&primary.url, &serde_json::json!({"name": "Cecelia Morgan"}));
    assert_eq!(s, StatusCode::OK);
    let health = primary.health();
    assert!(
        health["snapshot_lsn"].as_u64().expect("snapshot_lsn") > 100,
        "log not truncated: {health}"
    );
    let expected = (all_kv(&primary.url), support::entries(&primary.url));

    primary.kill9();
    standby.kill9();
    standby.restart();
    primary.restart();
    wait_for_streaming(&primary);
    assert_eq!(
        (all_kv(&primary.url), support::entries(&primary.url)),
        expected
    );
    assert_eq!(
        (all_kv(&standby.url), support::entries(&standby.url)),
        expected
    );
    let (_, counter) = get_json(&format!("{}/v1/counters/visits", standby.url));
    assert_eq!(counter["value"], 20);

    // A new, empty standby is behind what the log still holds: it gets a snapshot.
    let fresh = TestNode::standby("app3", root.path().join("app3"), &retain);
    primary.kill9();
    let mut args: Vec<&str> = vec!["--standby", &standby.url, "--standby", &fresh.url];
    args.extend_from_slice(&retain);
    let primary =
        TestNode::primary_on_port("app1", primary.port, root.path().join("app1"), &[], &args);
    wait_for_streaming(&primary);
    assert_eq!(all_kv(&fresh.url), expected.0);
    assert_eq!(support::entries(&fresh.url), expected.1);
    assert_eq!(
        put_kv(&primary.url, "after-snapshot", "yes").status(),
        StatusCode::OK
    );
    assert_eq!(
        get_value(&fresh.url, "after-snapshot").as_deref(),
        Some("yes")
    );
}

#[test]
fn async_mode_acknowledges_without_the_standby() {
    let root = tempdir();
    let (primary, mut standby) = pair(&root, &["--async"]);
    assert_eq!(primary.health()["mode"], "async");
    standby.kill9();
    assert_eq!(put_kv(&primary.url, "alone", "1").status(), StatusCode::OK);
    standby.restart();
    assert!(wait_until(Duration::from_secs(10), || get_value(
        &standby.url,
        "alone"
    )
    .is_some()));
}

#[test]
fn every_answer_names_the_node_and_health_and_metrics_describe_it() {
    let root = tempdir();
    let (mut primary, standby) = pair(&root, &[]);
    assert_eq!(put_kv(&primary.url, "a", "1").status(), StatusCode::OK);
    for (node, role) in [(&primary, "primary"), (&standby, "standby")] {
        for path in ["/v1/entries", "/v1/kv/a", "/no/such/route", "/health"] {
            let resp = http_client()
                .get(format!("{}{path}", node.url))
                .send()
                .expect("GET");
            let h = resp.headers();
            assert_eq!(
                h.get("keel-node").and_then(|v| v.to_str().ok()),
                Some(node.id.as_str()),
                "{path}"
            );
            assert_eq!(
                h.get("keel-role").and_then(|v| v.to_str().ok()),
                Some(role),
                "{path}"
            );
            assert_eq!(
                h.get("keel-epoch").and_then(|v| v.to_str().ok()),
                Some("1"),
                "{path}"
            );
            assert_eq!(
                h.get("keel-lsn").and_then(|v| v.to_str().ok()),
                Some("1"),
                "{path}"
            );
        }
    }
    let health = primary.health();
    assert_eq!(
        (health["node"].as_str(), health["role"].as_str()),
        (Some("app1"), Some("primary"))
    );
    assert_eq!(health["standbys"][0]["node"], "app2");
    assert_eq!(health["standbys"][0]["acked_lsn"], 1);
    assert_eq!(standby.health()["primary"], primary.url.as_str());
    let (status, metrics) = support::get_text(&format!("{}/metrics", primary.url));
    assert_eq!(status, StatusCode::OK);
    for line in [
        "keel_node_is_primary{node=\"app1\"} 1",
        "keel_node_last_lsn{node=\"app1\"} 1",
        "keel_node_writes_total{node=\"app1\",outcome=\"ok\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    // Told to stop, a node drains and exits cleanly.
    let exit = primary.proc.terminate();
    assert!(exit.success(), "{exit:?}");
}

/// Writes a cluster secret under `root` and returns the flags that start a member with it.
fn closed(root: &tempfile::TempDir) -> (std::path::PathBuf, Vec<String>) {
    let file = root.path().join("cluster.secret");
    std::fs::write(&file, support::TestMonitor::SECRET).expect("secret");
    let flags = vec![
        "--cluster-secret-file".to_owned(),
        file.display().to_string(),
    ];
    (file, flags)
}

/// The process's data segment (what its heap may use), from `/proc/PID/status`, in KiB.
fn vm_data_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmData:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmData")
}

#[test]
fn a_peer_declaring_a_huge_frame_costs_the_standby_only_what_it_sent() {
    let root = tempdir();
    let (secret, flags) = closed(&root);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let standby = TestNode::standby("app2", root.path().join("app2"), &flags);
    let before = vm_data_kib(standby.proc.pid());
    let signer = keel_auth::Signer::new(
        keel_auth::ClusterSecret::from_file(&secret)
            .expect("secret")
            .key(),
        "rogue",
    );
    let open = |declared: u32| {
        let url = format!("{}/v1/replication", standby.url);
        let signed = signer.sign("GET", &url, b"").expect("sign");
        let addr = standby.url.trim_start_matches("http://");
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            tcp,
            "GET /v1/replication HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\nUpgrade: {}\r\nKeel-Epoch: 1\r\nKeel-Node: rogue\r\nKeel-Auth: {}\r\n\r\n",
            keel_node::repl::PROTOCOL,
            signed.header
        )
        .expect("send upgrade");
        let head = read_head(&mut tcp);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The declared length, then only a few of its bytes.
        tcp.write_all(&declared.to_be_bytes()).expect("length");
        tcp.write_all(&[0u8; 100]).expect("some bytes");
        tcp
    };
    // Just under the frame limit, with 100 bytes of it sent: the standby waits for the
    // rest without setting aside room for it.
    let under = u32::try_from(frame::MAX_FRAME).expect("fits");
    let held: Vec<TcpStream> = (0..8).map(|_| open(under)).collect();
    thread::sleep(Duration::from_millis(300));
    let grew = vm_data_kib(standby.proc.pid()).saturating_sub(before);
    assert!(
        grew < 32 << 10,
        "eight frames of 8 MiB declared, 800 bytes sent: the standby grew by {grew} KiB"
    );
    // 512 MiB declared: the stream is ended at once, nothing allocated for it.
    let mut huge = open(512 << 20);
    let mut rest = Vec::new();
    let _ = huge.read_to_end(&mut rest);
    let grew = vm_data_kib(standby.proc.pid()).saturating_sub(before);
    assert!(grew < 32 << 10, "the standby grew by {grew} KiB");
    assert_eq!(standby.health()["role"], "standby");
    drop(held);
}

#[test]
fn a_store_larger_than_one_frame_streams_its_snapshot_to_a_new_standby() {
    let root = tempdir();
    let (_, flags) = closed(&root);
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--log-retain", "8"]);
    // The standby's port is known before it runs; the primary writes alone meanwhile.
    let port = support::free_port();
    let standby_url = support::url_for(port);
    let mut primary_flags = extra.clone();
    primary_flags.push("--async");
    let primary = TestNode::primary(
        "app1",
        root.path().join("app1"),
        std::slice::from_ref(&standby_url),
        &primary_flags,
    );
    let value = "v".repeat(512 << 10);
    let keys = 3 * frame::MAX_FRAME / value.len();
    for i in 0..keys {
        let resp = put_kv(&primary.url, &format!("big{i}"), &value);
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{}",
            resp.text().unwrap_or_default()
        );
    }
    let health = primary.health();
    assert!(
        health["snapshot_lsn"].as_u64().expect("snapshot_lsn") > 8,
        "the log was not truncated: {health}"
    );
    let standby = TestNode::standby_on_port("app2", port, root.path().join("app2"), &extra);
    wait_for_streaming(&primary);
    for i in 0..keys {
        assert_eq!(
            get_value(&standby.url, &format!("big{i}")).map(|v| v.len()),
            Some(value.len()),
            "big{i} is missing on the new standby"
        );
    }
    let log = standby.proc.log_text();
    assert!(log.contains("installed a snapshot"), "{log}");
}

/// A node's data directory holds one kind of store; started with the other `--store`, the
/// node would begin from nothing beside it, so it refuses and says how to start it.
#[test]
fn a_node_refuses_to_start_on_the_other_stores_directory_and_keeps_its_data() {
    let root = tempdir();
    let dir = root.path().join("app1");
    let mut node = TestNode::primary("app1", &dir, &[], &["--store", "log"]);
    assert_eq!(put_kv(&node.url, "kept", "yes").status(), StatusCode::OK);
    assert!(node.proc.terminate().success());

    let data = dir.display().to_string();
    let port = support::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "node",
        "--id",
        "app1",
        "--listen",
        &listen,
        "--data-dir",
        &data,
        "--role",
        "primary",
    ];
    let out = support::run_keel(&args);
    assert!(
        !out.success(),
        "a redb node started on keel.log: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("holds a log store (keel.log)")
            && out.stderr.contains("--store redb")
            && out.stderr.contains("start it with --store log"),
        "{}",
        out.stderr
    );
    assert!(
        !dir.join("keel.redb").exists(),
        "a redb file was made beside it"
    );

    // Started as it was, the node has its data.
    let node = TestNode::primary("app1", &dir, &[], &["--store", "log"]);
    let (status, body) = support::get_text(&format!("{}/v1/kv/kept", node.url));
    assert_eq!((status, body.as_str()), (StatusCode::OK, "yes"));
}

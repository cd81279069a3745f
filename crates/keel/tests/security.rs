//! The closed cluster (docs/security.md): a monitor and two nodes started with the admin
//! token and the cluster secret, as `keel up` starts them, attacked the way an outsider
//! on the same network would — and a member that never hands a credential to anyone.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use keel_auth::{AUTH_HEADER, ClusterSecret, Signer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    TestMonitor, TestNode, get_text, http_client, put_kv, run_keel, tempdir, wait_until,
};

/// A monitor, a primary (app1) and a promotable standby (app2), all closed.
struct Closed {
    _root: tempfile::TempDir,
    monitor: TestMonitor,
    nodes: Vec<TestNode>,
}

impl Closed {
    fn start() -> Closed {
        let root = tempdir();
        let monitor = TestMonitor::start_closed(&root.path().join("monitor"), &[]);
        let flags = monitor.member_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut nodes = Vec::new();
        for id in ["app1", "app2"] {
            nodes.push(TestNode::monitored(
                id,
                root.path().join(id),
                &monitor.url,
                &flags,
            ));
            if id == "app1" {
                assert!(
                    wait_until(
                        Duration::from_secs(10),
                        || monitor.cluster()["primary"]["node"] == "app1"
                    ),
                    "app1 never became primary: {}",
                    monitor.cluster()
                );
            }
        }
        let closed = Closed {
            _root: root,
            monitor,
            nodes,
        };
        assert!(
            wait_until(
                Duration::from_secs(20),
                || closed.node("app2")["promotable"] == true
            ),
            "app2 never became promotable: {}",
            closed.monitor.cluster()
        );
        closed
    }

    fn node(&self, id: &str) -> Value {
        self.monitor.cluster()["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node"] == id).cloned())
            .unwrap_or(Value::Null)
    }

    fn url(&self, id: &str) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.url.clone())
            .unwrap_or_default()
    }

    /// What may not change under an attack: who is primary, the epoch, every node's URL,
    /// sync flag and promotability.
    fn shape(&self) -> Value {
        let view = self.monitor.cluster();
        let nodes: Vec<Value> = view["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| json!([n["node"], n["url"], n["role"], n["sync"], n["promotable"]]))
                    .collect()
            })
            .unwrap_or_default();
        json!({"version": view["version"], "epoch": view["epoch"], "primary": view["primary"], "nodes": nodes})
    }

    /// A write through the current primary is acknowledged and reaches the standby.
    fn assert_writes_acknowledged(&self, key: &str) {
        let primary = self.monitor.cluster()["primary"]["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let resp = put_kv(&self.url(&primary), key, "still-written");
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{}",
            resp.text().unwrap_or_default()
        );
        let standby = if primary == "app1" { "app2" } else { "app1" };
        let (status, body) = get_text(&format!("{}/v1/kv/{key}", self.url(standby)));
        assert_eq!((status, body.as_str()), (StatusCode::OK, "still-written"));
    }

    fn secret_file(&self) -> PathBuf {
        self.monitor.secret_file.clone().unwrap_or_default()
    }
}

/// A listener that records every byte sent to it: where an attacker would wait for a
/// credential. `answer` is written on each connection once its request head is in.
struct Spy {
    url: String,
    received: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Spy {
    fn start(answer: Vec<u8>) -> Spy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rx, halt) = (received.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !halt.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => record(stream, &rx, &answer, &halt),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Spy {
            url,
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().expect("lock")).into_owned()
    }
}

fn record(mut stream: TcpStream, into: &Mutex<Vec<u8>>, answer: &[u8], halt: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut answered = answer.is_empty();
    let mut buf = [0u8; 4096];
    let mut idle = 0;
    while idle < 20 && !halt.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                idle = 0;
                let mut all = into.lock().expect("lock");
                all.extend_from_slice(&buf[..n]);
                if !answered && all.windows(4).any(|w| w == b"\r\n\r\n") {
                    answered = true;
                    drop(all);
                    let _ = stream.write_all(answer);
                }
            }
            Err(_) => idle += 1,
        }
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `POST url` with a JSON body and extra headers: the status and the JSON body.
fn post(url: &str, body: &Value, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = http_client().post(url).json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let resp = request.send().unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status();
    (status, resp.json().unwrap_or(Value::Null))
}

/// An insider: signs with the cluster secret, as a member would.
fn member(secret_file: &std::path::Path, id: &str) -> Signer {
    let secret = ClusterSecret::from_file(secret_file).expect("secret");
    Signer::new(secret.key(), id)
}

fn signed_post(signer: &Signer, url: &str, body: &Value) -> (StatusCode, Value) {
    let bytes = serde_json::to_vec(body).expect("json");
    let signed = signer.sign("POST", url, &bytes).expect("sign");
    let resp = http_client()
        .post(url)
        .header("content-type", "application/json")
        .header(AUTH_HEADER, &signed.header)
        .body(bytes)
        .send()
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn outsiders_cannot_register_heartbeat_drop_replicate_or_act_and_the_cluster_is_unchanged() {
    let cluster = Closed::start();
    let spy = Spy::start(Vec::new());
    let before = cluster.shape();
    let monitor = &cluster.monitor.url;
    let primary_url = cluster.url("app1");
    let wrong_secret = Signer::new(
        ClusterSecret::new(&"x".repeat(48), "attacker")
            .expect("secret")
            .key(),
        "evil",
    );

    // A made-up node with the attacker's URL, with no signature and with a forged one.
    let evil = json!({"node": "evil", "url": spy.url, "incarnation": 1, "epoch": 1, "lsn": 0});
    let (status, body) = post(&format!("{monitor}/v1/register"), &evil, &[]);
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("members_only")),
        "{body}"
    );
    let (status, body) = signed_post(&wrong_secret, &format!("{monitor}/v1/register"), &evil);
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_signature")),
        "{body}"
    );

    // The primary's own id with a new incarnation and an epoch near the top.
    let takeover = json!({"node": "app1", "url": primary_url, "incarnation": 424242,
                          "epoch": (1u64 << 62) - 1, "lsn": 0});
    let (status, body) = post(&format!("{monitor}/v1/register"), &takeover, &[]);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // Forged heartbeats (a dead primary kept alive, an epoch near the top) and a forged
    // sync drop that would empty the sync set.
    let heartbeat = json!({"node": "app1", "incarnation": 1, "role": "primary",
                           "epoch": (1u64 << 62) - 1, "lsn": 0, "standbys": [], "draining": false});
    let (status, body) = post(&format!("{monitor}/v1/heartbeat"), &heartbeat, &[]);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let drop = json!({"node": "app1", "epoch": 1, "standby": "app2"});
    let (status, body) = post(&format!("{monitor}/v1/sync/drop"), &drop, &[]);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // Posing as the primary to the standby, from a newer epoch.
    let resp = http_client()
        .get(format!("{}/v1/replication", cluster.url("app2")))
        .header("connection", "upgrade")
        .header("upgrade", "keel-replication/2")
        .header("keel-epoch", "99")
        .header("keel-node", "app1")
        .send()
        .expect("GET /v1/replication");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Operator actions without the token.
    let (status, _) = post(&format!("{primary_url}/admin/kill"), &json!({}), &[]);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&format!("{monitor}/v1/failover"), &json!({}), &[]);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(
        &format!("{monitor}/v1/failover"),
        &json!({}),
        &[("authorization", "Bearer not-the-token-but-long-enough")],
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Nothing changed, nothing reached the attacker, and writes go on.
    assert_eq!(cluster.shape(), before);
    assert_eq!(
        cluster.node("app2")["epoch"],
        1,
        "{}",
        cluster.monitor.cluster()
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        cluster.shape(),
        before,
        "the cluster changed after the attacks"
    );
    assert!(
        spy.text().is_empty(),
        "the attacker's listener received: {}",
        spy.text()
    );
    cluster.assert_writes_acknowledged("after-the-attacks");
}

#[test]
fn a_member_never_sends_a_credential_and_streams_nothing_to_an_unproven_standby() {
    let cluster = Closed::start();
    cluster.assert_writes_acknowledged("before-the-spy");
    // Something that answers the upgrade as a standby would, but cannot sign: it took a
    // member's port, say. It even says hello with an empty log, which a real standby's
    // primary would answer with its whole state.
    let hello = keel_node::repl::frame::encode(&keel_node::repl::frame::ToPrimary::Hello {
        node: "spy".to_owned(),
        last: keel_core::LogPos::default(),
        epochs: Vec::new(),
    })
    .expect("encode");
    let mut answer =
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: keel-replication/2\r\n\r\n"
            .to_vec();
    answer.extend_from_slice(&u32::try_from(hello.len()).expect("len").to_be_bytes());
    answer.extend_from_slice(&hello);
    let spy = Spy::start(answer);

    // An insider registers the spy's URL: the primary is told to replicate to it.
    let insider = member(&cluster.secret_file(), "spy");
    let monitor = &cluster.monitor.url;
    let spy_node = json!({"node": "spy", "url": spy.url, "incarnation": 7, "epoch": 1, "lsn": 0});
    let (status, body) = signed_post(&insider, &format!("{monitor}/v1/register"), &spy_node);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        wait_until(Duration::from_secs(10), || spy
            .text()
            .contains("/v1/replication HTTP/1.1")),
        "the primary never connected to the registered standby: {}\nthe spy saw: {:?}",
        cluster.monitor.cluster(),
        spy.text()
    );
    thread::sleep(Duration::from_millis(1000));
    let seen = spy.text();
    let lower = seen.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("{AUTH_HEADER}: v1 kind=member id=app1")),
        "{seen}"
    );
    assert!(!lower.contains("authorization"), "{seen}");
    assert!(
        !seen.contains(TestMonitor::TOKEN),
        "the admin token was sent: {seen}"
    );
    assert!(
        !seen.contains(TestMonitor::SECRET),
        "the cluster secret was sent: {seen}"
    );
    // The spy's unsigned upgrade was not taken: no log entry left the primary.
    assert!(
        !seen.contains("before-the-spy"),
        "data streamed to a non-member: {seen}"
    );
    cluster.assert_writes_acknowledged("with-the-spy-registered");
}

#[test]
fn a_member_reporting_an_epoch_the_monitor_never_issued_is_refused_and_failover_still_works() {
    let mut cluster = Closed::start();
    let insider = member(&cluster.secret_file(), "app9");
    let monitor = cluster.monitor.url.clone();
    let epoch = cluster.monitor.cluster()["epoch"].as_u64().expect("epoch");
    let claim = json!({"node": "app9", "url": "http://127.0.0.1:9", "incarnation": 9,
                       "epoch": (1u64 << 62) - 1, "lsn": 0});
    let (status, body) = signed_post(&insider, &format!("{monitor}/v1/register"), &claim);
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("epoch_not_issued")),
        "{body}"
    );
    // A member speaks for itself only.
    let (status, body) = signed_post(
        &insider,
        &format!("{monitor}/v1/register"),
        &json!({"node": "app1", "url": cluster.url("app1"), "incarnation": 5, "epoch": 1, "lsn": 0}),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("wrong_member")),
        "{body}"
    );
    let events = support::read_events(&monitor, "epoch_refused");
    assert!(
        events.contains("app9 reported epoch 4611686018427387903"),
        "{events}"
    );
    assert_eq!(cluster.monitor.cluster()["epoch"].as_u64(), Some(epoch));

    // The next failover takes the monitor's next epoch, and every node follows it.
    cluster.nodes[0].kill9();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let view = cluster.monitor.cluster();
            view["primary"]["node"] == "app2" && view["failover_in_progress"] == false
        }),
        "app2 never took over: {}",
        cluster.monitor.cluster()
    );
    assert_eq!(cluster.monitor.cluster()["epoch"].as_u64(), Some(epoch + 1));
    let resp = put_kv(&cluster.url("app2"), "after-failover", "v");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().unwrap_or_default()
    );
}

#[test]
fn without_a_cluster_secret_nothing_listens_beyond_loopback() {
    let dir = tempdir();
    let data = dir.path().display().to_string();
    for args in [
        vec!["monitor", "--listen", "0.0.0.0:0", "--data-dir", &data],
        vec![
            "node",
            "--id",
            "app1",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            &data,
            "--role",
            "primary",
        ],
        vec![
            "proxy",
            "--listen",
            "0.0.0.0:0",
            "--cluster",
            "http://127.0.0.1:9",
            "--admin",
            "127.0.0.1:0",
        ],
    ] {
        let out = run_keel(&args);
        assert!(!out.success(), "{out}");
        assert!(out.stderr.contains("without a cluster secret"), "{out}");
        assert!(out.stderr.contains("--cluster-secret-file"), "{out}");
    }
}

#[test]
fn the_monitor_answers_members_while_1100_connections_hold_half_sent_bodies() {
    let root = tempdir();
    let monitor = TestMonitor::start_closed(&root.path().join("monitor"), &[]);
    let flags = monitor.member_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = TestNode::monitored("app1", root.path().join("app1"), &monitor.url, &flags);
    assert!(
        wait_until(
            Duration::from_secs(10),
            || monitor.cluster()["primary"]["node"] == "app1"
        ),
        "no primary: {}",
        monitor.cluster()
    );
    let host = format!("127.0.0.1:{}", monitor.port);
    let half = format!(
        "POST /v1/heartbeat HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"node\": "
    );
    let mut flood = Vec::new();
    for _ in 0..1100 {
        let mut slow = TcpStream::connect(&host).expect("connect");
        slow.write_all(half.as_bytes()).expect("write");
        flood.push(slow);
    }
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    for round in 0..5 {
        let health = quick.get(format!("{}/health", monitor.url)).send();
        assert!(
            health.as_ref().is_ok_and(|r| r.status() == StatusCode::OK),
            "round {round}: /health did not answer within 1 s: {health:?}"
        );
        let view: Value = quick
            .get(format!("{}/v1/cluster", monitor.url))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| {
                panic!("round {round}: /v1/cluster did not answer within 1 s: {e}")
            });
        let app1 = &view["nodes"][0];
        assert_eq!(app1["healthy"], true, "round {round}: {view}");
        assert!(
            app1["last_heartbeat_ms_ago"]
                .as_u64()
                .is_some_and(|ms| ms < 1000),
            "round {round}: the member's heartbeats stopped getting through: {view}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    // The primary kept its lease through its heartbeats: writes are acknowledged.
    let resp = quick
        .put(format!("{}/v1/kv/during-the-flood", node.url))
        .body("yes")
        .send()
        .expect("PUT within 1 s");
    assert_eq!(resp.status(), StatusCode::OK);
    drop(flood);
}

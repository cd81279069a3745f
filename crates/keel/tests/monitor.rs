//! A real `keel monitor`, spoken to with plain HTTP as docs/failover.md describes: fake
//! nodes register and heartbeat, the primary goes silent, the standby is promoted, the
//! monitor is killed and comes back with its state.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{TestMonitor, free_port, http_client, run_keel, tempdir, url_for, wait_until};

/// A fake data node: what a real one would send, nothing more.
struct FakeNode {
    id: &'static str,
    url: String,
    incarnation: u64,
}

impl FakeNode {
    /// A node whose URL points at a port where nothing listens, so probes of it fail.
    fn new(id: &'static str, incarnation: u64) -> Self {
        Self {
            id,
            url: url_for(free_port()),
            incarnation,
        }
    }

    fn register(&self, monitor: &TestMonitor, epoch: u64, lsn: u64) -> (StatusCode, Value) {
        monitor.post(
            "/v1/register",
            &json!({"node": self.id, "url": self.url, "incarnation": self.incarnation,
                    "epoch": epoch, "lsn": lsn}),
        )
    }

    fn heartbeat(
        &self,
        monitor: &TestMonitor,
        role: &str,
        epoch: u64,
        lsn: u64,
        standbys: Value,
    ) -> (StatusCode, Value) {
        monitor.post(
            "/v1/heartbeat",
            &json!({"node": self.id, "incarnation": self.incarnation, "role": role,
                    "epoch": epoch, "lsn": lsn, "standbys": standbys, "draining": false}),
        )
    }
}

fn node<'a>(cluster: &'a Value, id: &str) -> &'a Value {
    cluster["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == id))
        .unwrap_or_else(|| panic!("{id} not in the cluster view: {cluster}"))
}

/// Reads the monitor's event stream from the start until `until` shows up.
fn read_events(monitor: &TestMonitor, until: &str) -> String {
    support::read_events(&monitor.url, until)
}

#[test]
fn silent_primary_is_replaced_by_the_promotable_standby_and_the_monitor_survives_sigkill() {
    let root = tempdir();
    let mut monitor = TestMonitor::start(&root.path().join("monitor"), &[]);
    let app1 = FakeNode::new("app1", 101);
    let app2 = FakeNode::new("app2", 202);

    // The first to register is primary, the second a standby out of the sync set.
    let (status, v) = app1.register(&monitor, 0, 0);
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["role"].as_str(), v["epoch"].as_u64()),
        (Some("primary"), Some(1))
    );
    let (status, v) = app2.register(&monitor, 0, 0);
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["role"], "standby");
    assert_eq!(v["primary"]["node"], "app1");

    // Two steps back into the sync set: streaming → sync; the primary waits → promotable.
    let (_, v) = app1.heartbeat(
        &monitor,
        "primary",
        1,
        5,
        json!([{"node": "app2", "streaming": true, "acked_lsn": 5, "sync": false}]),
    );
    assert_eq!(v["standbys"][0]["sync"], true, "{v}");
    assert_eq!(v["lease_ms"], 500);
    assert_eq!(node(&monitor.cluster(), "app2")["promotable"], false);
    app1.heartbeat(
        &monitor,
        "primary",
        1,
        5,
        json!([{"node": "app2", "streaming": true, "acked_lsn": 5, "sync": true}]),
    );
    app2.heartbeat(&monitor, "standby", 1, 5, json!([]));
    let cluster = monitor.cluster();
    assert_eq!(node(&cluster, "app2")["promotable"], true, "{cluster}");

    // Refused heartbeats change nothing.
    let version = monitor.cluster()["version"].clone();
    let resp = http_client()
        .post(format!("{}/v1/heartbeat", monitor.url))
        .header("content-type", "application/json")
        .body(r#"{"node": "app1", "incarnation": "#)
        .send()
        .expect("POST malformed heartbeat");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().expect("JSON error body");
    assert_eq!(body["error"], "bad_heartbeat");
    let (status, body) = FakeNode::new("ghost", 1).heartbeat(&monitor, "standby", 1, 0, json!([]));
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_node"))
    );
    let stale = FakeNode {
        incarnation: 99,
        ..FakeNode::new("app2", 0)
    };
    let (status, body) = stale.heartbeat(&monitor, "standby", 1, 5, json!([]));
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "stale_incarnation");
    assert_eq!(body["view"]["role"], "standby");
    let (status, body) = app2.heartbeat(&monitor, "primary", 1, 5, json!([]));
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("stale_epoch"))
    );
    assert_eq!(
        monitor.cluster()["version"],
        version,
        "refusals changed the state"
    );

    // app1 goes silent; app2 keeps heartbeating until it is told to be primary.
    let mut epoch = 1;
    let mut promoted = Value::Null;
    let told = wait_until(Duration::from_secs(15), || {
        let (status, v) = app2.heartbeat(&monitor, "standby", epoch, 5, json!([]));
        assert_eq!(status, StatusCode::OK, "{v}");
        epoch = epoch.max(v["epoch"].as_u64().unwrap_or(epoch));
        if v["role"] == "primary" {
            promoted = v;
            return true;
        }
        false
    });
    assert!(told, "app2 was never promoted: {}", monitor.cluster());
    assert_eq!(promoted["epoch"], 2);
    assert_eq!(promoted["failover"]["phase"], "promoting");
    assert_eq!(promoted["failover"]["from"], "app1");
    assert!(
        promoted.get("lease_ms").is_none(),
        "no lease while promoting: {promoted}"
    );

    // It takes writes in epoch 2 and says so: the failover is over, its lease renewed.
    let (status, v) = app2.heartbeat(&monitor, "primary", 2, 5, json!([]));
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["failover"], Value::Null);
    assert_eq!(v["lease_ms"], 500);

    // The old primary is told to step down.
    let (status, body) = app1.heartbeat(&monitor, "primary", 1, 7, json!([]));
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "stale_epoch");
    assert_eq!(body["view"]["role"], "standby");
    assert_eq!(body["view"]["primary"]["node"], "app2");

    // Every step is on the event stream.
    let events = read_events(&monitor, "event: failover_done");
    for kind in [
        "monitor_started",
        "registered",
        "primary_elected",
        "back_in_sync",
        "promotable",
        "stale_heartbeat",
        "suspected",
        "probe_failed",
        "failover_started",
        "promoted",
        "failover_done",
    ] {
        assert!(
            events.contains(&format!("event: {kind}\n")),
            "no {kind} in:\n{events}"
        );
    }
    assert!(
        events.contains(r#""message":"app2 is primary in epoch 2""#),
        "{events}"
    );

    // SIGKILL and restart: the epoch, the roles and the version are all still there.
    let before = monitor.cluster();
    monitor.proc.kill9();
    monitor.restart();
    let after = monitor.cluster();
    for field in ["version", "epoch", "primary", "failover"] {
        assert_eq!(
            after[field], before[field],
            "{field} changed across the restart"
        );
    }
    assert_eq!(after["epoch"], 2);
    let (status, v) = app2.heartbeat(&monitor, "primary", 2, 5, json!([]));
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["role"], "primary");
    // A new node joins below the kept epoch, not at a new one.
    let (status, v) = FakeNode::new("app3", 303).register(&monitor, 0, 0);
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["role"].as_str(), v["epoch"].as_u64()),
        (Some("standby"), Some(2))
    );
}

#[test]
fn switchover_needs_the_admin_token() {
    let root = tempdir();
    let monitor = TestMonitor::start(&root.path().join("monitor"), &[]);
    let app1 = FakeNode::new("app1", 1);
    app1.register(&monitor, 0, 0);
    let url = format!("{}/v1/failover", monitor.url);

    let resp = http_client().post(&url).send().expect("POST /v1/failover");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().expect("JSON body");
    assert_eq!(body["error"], "unauthorized");
    let resp = http_client()
        .post(&url)
        .bearer_auth("not-the-token-at-all")
        .send()
        .expect("POST /v1/failover");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // With the token: no standby to switch to, and the reasons say so.
    let resp = http_client()
        .post(&url)
        .bearer_auth(&monitor.token)
        .json(&json!({"to": "app1"}))
        .send()
        .expect("POST /v1/failover");
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: Value = resp.json().expect("JSON body");
    assert_eq!(body["error"], "no_promotable_standby");
    assert_eq!(body["reasons"]["app1"], "it is the primary");

    // A monitor without a token refuses admin actions altogether.
    let plain_dir = root.path().join("plain");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut plain = support::KeelProcess::spawn(
        "plain-monitor",
        &[
            "monitor",
            "--listen",
            &listen,
            "--data-dir",
            &plain_dir.display().to_string(),
        ],
    );
    let up = wait_until(Duration::from_secs(10), || {
        http_client()
            .get(format!("{}/health", url_for(port)))
            .send()
            .is_ok_and(|r| r.status() == StatusCode::OK)
    });
    assert!(up, "{}", plain.log_report());
    let resp = http_client()
        .post(format!("{}/v1/failover", url_for(port)))
        .bearer_auth(&monitor.token)
        .send()
        .expect("POST /v1/failover");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    plain.terminate();
}

#[test]
fn bad_requests_get_json_errors() {
    let root = tempdir();
    let monitor = TestMonitor::start(&root.path().join("monitor"), &[]);
    let client = http_client();

    let resp = client
        .get(format!("{}/v1/nowhere", monitor.url))
        .send()
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.json::<Value>().expect("JSON")["error"], "no_route");

    let resp = client
        .get(format!("{}/v1/heartbeat", monitor.url))
        .send()
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        resp.json::<Value>().expect("JSON")["error"],
        "method_not_allowed"
    );

    let resp = client
        .post(format!("{}/v1/heartbeat", monitor.url))
        .body(vec![b' '; 2 << 20])
        .send()
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        resp.json::<Value>().expect("JSON")["error"],
        "body_too_large"
    );
    // A heartbeat that is not one is counted as refused.
    let resp = client
        .post(format!("{}/v1/heartbeat", monitor.url))
        .body("not json")
        .send()
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let (status, body) = monitor.post(
        "/v1/register",
        &json!({"node": "bad/id", "url": "http://127.0.0.1:1", "incarnation": 1, "epoch": 0, "lsn": 0}),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_register"))
    );
    let (status, body) = monitor.post(
        "/v1/register",
        &json!({"node": "app1", "url": "ftp://x", "incarnation": 1, "epoch": 0, "lsn": 0}),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_register"))
    );
    assert_eq!(monitor.cluster()["nodes"], json!([]));

    let (status, text) = support::get_text(&format!("{}/metrics", monitor.url));
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("keel_monitor_epoch 0"), "{text}");
    assert!(
        text.contains("keel_monitor_heartbeats_refused_total 1"),
        "{text}"
    );
}

#[test]
fn corrupt_state_file_stops_the_start_with_a_clear_error() {
    let root = tempdir();
    let dir = root.path().join("monitor");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("monitor.json"), "{\"version\": 3,").expect("write");
    let port = free_port().to_string();
    let out = run_keel(&[
        "monitor",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &dir.display().to_string(),
    ]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("monitor.json is corrupt"), "{out}");
    assert!(!out.stderr.contains("panicked"), "{out}");
}

#[test]
fn timing_flags_that_cannot_work_are_refused() {
    let root = tempdir();
    let dir = root.path().join("monitor").display().to_string();
    let out = run_keel(&[
        "monitor",
        "--data-dir",
        &dir,
        "--heartbeat-interval",
        "200ms",
        "--heartbeat-timeout",
        "100ms",
    ]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains("must be longer than the heartbeat interval"),
        "{out}"
    );
    let out = run_keel(&["monitor", "--data-dir", &dir, "--lease", "50ms"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("the lease"), "{out}");
}

#[test]
fn an_epoch_at_the_top_of_the_range_is_refused_and_changes_nothing() {
    let dir = tempdir();
    let monitor = TestMonitor::start(dir.path(), &[]);
    let before = monitor.cluster();
    let (status, body) = monitor.post(
        "/v1/register",
        &json!({"node": "app1", "url": "http://127.0.0.1:1", "incarnation": 1, "epoch": u64::MAX, "lsn": 0}),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("out of range")),
        "{body}"
    );
    assert_eq!(monitor.cluster()["version"], before["version"]);
}

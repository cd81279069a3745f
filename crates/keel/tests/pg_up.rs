//! The PostgreSQL homework, for real: `keel up --postgres` runs a primary and two
//! synchronous standbys, each made and run by a keeper under PostgreSQL's own monitor,
//! behind the proxy's TCP ports, and two services whose `/data` reads through the
//! read-only port. Under `keel load`, both services and both standbys answer; a standby
//! killed with kill -9 costs no request and leaves the spread, and comes back when
//! restarted; a service killed costs no GET. Beyond the homework: the primary killed under
//! writes is failed over within 3 s with no acknowledged write lost, rejoins, and a
//! switchover by hand brings it back, each step in `keel up`'s output.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::pg::PgCluster;
use support::*;

/// `keel load` on `/data` for `seconds`, spread over the service and the PostgreSQL
/// server; its JSON report is written to `json`.
fn load(proxy: &str, seconds: u64, json: &Path) -> KeelProcess {
    KeelProcess::spawn(
        "load",
        &[
            "load",
            &format!("{proxy}/data"),
            "--spread-by",
            "json:backend_id,json:postgres_node",
            "--rate",
            "40",
            "--duration",
            &format!("{seconds}s"),
            "--quiet",
            "--json",
            &json.display().to_string(),
        ],
    )
}

fn report(mut load: KeelProcess, json: &Path) -> Value {
    let status = load
        .wait_timeout(Duration::from_secs(60))
        .expect("load ends");
    assert!(status.success(), "keel load failed\n{}", load.log_report());
    serde_json::from_str(&std::fs::read_to_string(json).expect("report")).expect("JSON")
}

/// Answers per name of one field (0: the service, 1: the PostgreSQL server) over the
/// seconds `from..` of the timeline.
fn field_counts(
    report: &Value,
    field: usize,
    from: u64,
) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for row in report["timeline"].as_array().into_iter().flatten() {
        if row["second"].as_u64().unwrap_or(0) < from {
            continue;
        }
        for (name, n) in row["spread"].as_object().into_iter().flatten() {
            let part = name.split(" × ").nth(field).unwrap_or("?").to_owned();
            *counts.entry(part).or_insert(0) += n.as_u64().unwrap_or(0);
        }
    }
    counts
}

fn share(counts: &std::collections::BTreeMap<String, u64>, name: &str) -> f64 {
    let total: u64 = counts.values().sum();
    counts.get(name).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

fn errors_from(report: &Value, from: u64) -> u64 {
    report["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["second"].as_u64().unwrap_or(0) >= from)
        .map(|r| r["errors"].as_u64().unwrap_or(0))
        .sum()
}

fn in_read_pool(admin: &str, name: &str) -> bool {
    let (_, v) = get_json(&format!("{admin}/v1/tcp"));
    v["pools"][0]["servers"].as_array().is_some_and(|s| {
        s.iter()
            .any(|s| s["name"] == name && s["in_read_only"] == true)
    })
}

fn chaos(up: &KeelUp, what: &str, name: &str) {
    let out = run_keel(&[
        "chaos",
        "--data-dir",
        &up.data_dir.display().to_string(),
        what,
        name,
    ]);
    assert!(out.success(), "keel chaos {what} {name}: {out}");
}

/// Writes acknowledged through the front door: the value written, the server that took
/// it, and when.
type Acked = Arc<Mutex<Vec<(String, String, Instant)>>>;

/// A writer that POSTs `/data` through the front door every 20 ms until `stop`, keeping
/// the writes acknowledged (a 2xx with the row).
fn write_through(front: &str, stop: Arc<AtomicBool>) -> (std::thread::JoinHandle<()>, Acked) {
    let acked: Acked = Arc::default();
    let (url, seen) = (format!("{front}/data"), acked.clone());
    let writer = std::thread::spawn(move || {
        let client = http_client();
        let mut k = 0;
        while !stop.load(Ordering::SeqCst) {
            k += 1;
            let value = format!("w{k}");
            let answer = client
                .post(&url)
                .body(format!(r#"{{"value":"{value}"}}"#))
                .send();
            if let Ok(r) = answer
                && r.status().is_success()
                && let Ok(body) = r.json::<Value>()
                && body["row"]["value"] == value.as_str()
            {
                let node = body["postgres_node"].as_str().unwrap_or("?").to_owned();
                seen.lock()
                    .expect("acked")
                    .push((value, node, Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (writer, acked)
}

/// PostgreSQL's monitor's view.
fn pg_view(monitor: &str) -> Value {
    get_json(&format!("{monitor}/v1/cluster")).1
}

/// The primary `monitor` names once no failover runs, if it is not `old`.
fn primary_other_than(monitor: &str, old: &str) -> Option<String> {
    let view = pg_view(monitor);
    let primary = view["primary"]["node"].as_str()?;
    (primary != old && view["failover_in_progress"] == false).then(|| primary.to_owned())
}

#[test]
fn the_homeworks_three_scenarios_under_load() {
    let dir = tempdir();
    // The postgres account runs the servers: it must reach the data directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let data = dir.path().join("keel-data");
    let pg_port = free_port_range(3).to_string();
    let tcp_port = free_port_range(2);
    let keeper_port = free_port_range(4);
    let up = KeelUp::start(
        &data,
        2,
        &[
            "--postgres",
            "--pg-port",
            &pg_port,
            "--tcp-port",
            &tcp_port.to_string(),
            "--keeper-port",
            &keeper_port.to_string(),
        ],
    );
    let admin = up.proxy_admin_url.clone();
    assert!(
        wait_until(Duration::from_secs(20), || in_read_pool(&admin, "pg2")
            && in_read_pool(&admin, "pg3")),
        "the standbys never joined the read pool\n{}",
        up.proc.log_report()
    );

    // The services' read connections were made while the proxy was still finding the
    // standbys; each is replaced within 7.5 s (READ_MAX_AGE and its jitter), and
    // spreads then.
    std::thread::sleep(Duration::from_secs(8));

    // Normal operation: both services and both standbys, each at least 30%; never the
    // primary while a standby is usable.
    let json = dir.path().join("normal.json");
    let normal = report(load(&up.proxy_url, 8, &json), &json);
    assert_eq!(normal["errors"], 0, "{normal}");
    let services = field_counts(&normal, 0, 0);
    let servers = field_counts(&normal, 1, 0);
    for (counts, names) in [
        (&services, ["service1", "service2"]),
        (&servers, ["pg2", "pg3"]),
    ] {
        for name in names {
            assert!(share(counts, name) >= 0.3, "{name}: {counts:?}\n{normal}");
        }
    }
    assert_eq!(
        servers.get("pg1"),
        None,
        "a read reached the primary: {servers:?}"
    );

    // A standby killed with kill -9 under load: no failed request after the checks' fall
    // time (two checks a second apart), and the spread shows pg3 alone.
    let json = dir.path().join("standby.json");
    let running = load(&up.proxy_url, 12, &json);
    std::thread::sleep(Duration::from_secs(3));
    chaos(&up, "kill", "pg2");
    let killed = report(running, &json);
    assert_eq!(
        errors_from(&killed, 6),
        0,
        "failures after the fall time: {killed}"
    );
    let after = field_counts(&killed, 1, 7);
    assert_eq!(after.keys().collect::<Vec<_>>(), ["pg3"], "{after:?}");
    // Restarted, it is back in the pool, and in the spread.
    chaos(&up, "restart", "pg2");
    assert!(
        wait_until(Duration::from_secs(15), || in_read_pool(&admin, "pg2")),
        "pg2 never came back\n{}",
        up.proc.log_report()
    );
    let json = dir.path().join("back.json");
    let back = report(load(&up.proxy_url, 12, &json), &json);
    assert_eq!(back["errors"], 0, "{back}");
    let late = field_counts(&back, 1, 7);
    assert!(
        share(&late, "pg2") >= 0.2,
        "pg2 is not back in the spread: {late:?}"
    );

    // A backend killed under load: not one failed GET.
    let json = dir.path().join("backend.json");
    let running = load(&up.proxy_url, 8, &json);
    std::thread::sleep(Duration::from_secs(3));
    chaos(&up, "kill", "service1");
    let killed = report(running, &json);
    assert_eq!(killed["errors"], 0, "{killed}");
    let last = field_counts(&killed, 0, 5);
    assert_eq!(last.keys().collect::<Vec<_>>(), ["service2"], "{last:?}");

    // Beyond the homework: the primary's keeper killed (its server dies with it) under a
    // writer through the front door.
    let pg_monitor = url_for(keeper_port);
    assert_eq!(pg_view(&pg_monitor)["primary"]["node"], "pg1");
    let stop = Arc::new(AtomicBool::new(false));
    let (writer, acked) = write_through(&up.proxy_url, stop.clone());
    assert!(
        wait_until(Duration::from_secs(10), || acked
            .lock()
            .expect("acked")
            .len()
            > 10),
        "no write was acknowledged\n{}",
        up.proc.log_report()
    );
    let killed = Instant::now();
    chaos(&up, "kill", "pg1");
    let mut promoted = None;
    // A standby is primary within 3 s.
    let in_time = wait_until(Duration::from_secs(3), || {
        promoted = primary_other_than(&pg_monitor, "pg1");
        promoted.is_some()
    });
    assert!(
        in_time,
        "no standby primary within 3 s: {}\n{}",
        pg_view(&pg_monitor),
        up.proc.log_report()
    );
    let promoted = promoted.expect("a primary");
    eprintln!("{promoted} primary {:?} after the kill", killed.elapsed());
    let took_writes = wait_until(Duration::from_secs(10), || {
        acked
            .lock()
            .expect("acked")
            .iter()
            .any(|(_, node, at)| *at > killed && *node == promoted)
    });
    assert!(
        took_writes,
        "no write taken by {promoted}\n{}",
        up.proc.log_report()
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    let acked = acked.lock().expect("acked").clone();
    // Every acknowledged write is on the new primary, read through the read-write port.
    let cluster = PgCluster::unmade(&data);
    let present = cluster
        .query_one(tcp_port, "SELECT string_agg(value, ',') FROM keel_data")
        .expect("the rows, through the read-write port");
    let present: std::collections::HashSet<&str> = present.split(',').collect();
    let lost: Vec<&str> = acked
        .iter()
        .map(|(value, _, _)| value.as_str())
        .filter(|value| !present.contains(value))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // keel up's output tells each step, from PostgreSQL's monitor.
    let log = up.proc.log_text();
    for step in [
        "pgmonitor  suspected: primary pg1 suspected",
        &format!("pgmonitor  promoted: {promoted} is told to promote"),
        &format!("pgmonitor  failover done: {promoted} is primary"),
    ] {
        assert!(
            log.contains(step),
            "{step:?} not in keel up's output\n{log}"
        );
    }

    // Restarted, pg1 is rewound and follows the new primary, promotable again.
    chaos(&up, "restart", "pg1");
    let rejoined = wait_until(Duration::from_secs(30), || {
        pg_view(&pg_monitor)["nodes"]
            .as_array()
            .is_some_and(|nodes| {
                nodes.iter().any(|n| {
                    n["node"] == "pg1" && n["role"] == "standby" && n["promotable"] == true
                })
            })
    });
    assert!(
        rejoined,
        "pg1 never a promotable standby again: {}\n{}",
        pg_view(&pg_monitor),
        up.proc.log_report()
    );
    assert!(
        up.proc.log_text().contains("pgmonitor  rejoined: pg1"),
        "{}",
        up.proc.log_report()
    );

    // `keel client` works on PostgreSQL's monitor: the servers as it sees them, and a
    // switchover by hand back to pg1, which then takes the writes.
    let token = up.token_file.display().to_string();
    let out = run_keel(&["client", "--monitor", &pg_monitor, "cluster"]);
    assert!(out.success(), "{out}");
    for name in ["pg1", "pg2", "pg3"] {
        assert!(out.stdout.contains(name), "{out}");
    }
    let out = run_keel(&[
        "client",
        "--monitor",
        &pg_monitor,
        "--token-file",
        &token,
        "failover",
        "--to",
        "pg1",
    ]);
    assert!(out.success(), "keel client failover --to pg1: {out}");
    let back = wait_until(Duration::from_secs(15), || {
        primary_other_than(&pg_monitor, &promoted).as_deref() == Some("pg1")
    });
    assert!(back, "pg1 never primary again: {}", pg_view(&pg_monitor));
    let written = wait_until(Duration::from_secs(15), || {
        http_client()
            .post(format!("{}/data", up.proxy_url))
            .body(r#"{"value":"back on pg1"}"#)
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .is_some_and(|v| v["postgres_node"] == "pg1")
    });
    assert!(written, "no write taken by pg1 after the switchover");
}

/// `keel pg`: PostgreSQL behind the proxy and two services, no data tier; writes go to
/// the primary, reads to a standby, bad bodies are refused, a standby paused with `keel
/// chaos pause` is passed over once the checks time out, and with every server down
/// `/data` answers 503 with the reason until one is back.
#[test]
fn keel_pg_runs_the_homework_without_the_data_tier() {
    let dir = tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let data = dir.path().join("keel-data");
    let ports = free_ports(5);
    let (pg_port, tcp_port) = (free_port_range(3), free_port_range(2));
    let (service_port, keeper_port) = (free_port_range(2), free_port_range(4));
    let args: Vec<String> = vec![
        "pg".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--pg-port".into(),
        pg_port.to_string(),
        "--tcp-port".into(),
        tcp_port.to_string(),
        "--keeper-port".into(),
        keeper_port.to_string(),
        "--service-port".into(),
        service_port.to_string(),
        "--proxy-port".into(),
        ports[0].to_string(),
        "--proxy-admin-port".into(),
        ports[1].to_string(),
        "--control-port".into(),
        ports[2].to_string(),
    ];
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut pg = KeelProcess::spawn_captured("pg", &arg_refs);
    assert!(
        wait_until(Duration::from_secs(60), || pg
            .log_text()
            .contains("Ctrl-C stops everything")
            || !pg.is_running()),
        "keel pg did not come up\n{}",
        pg.log_report()
    );
    let log = pg.log_text();
    assert!(
        log.contains("no data tier") && !log.contains("app1"),
        "{log}"
    );
    let front = url_for(ports[0]);
    let client = http_client();

    let written: Value = client
        .post(format!("{front}/data"))
        .body(r#"{"value":"hello"}"#)
        .send()
        .and_then(|r| r.json())
        .expect("POST /data");
    assert_eq!(written["postgres_node"], "pg1", "{written}");
    assert_eq!(written["row"]["value"], "hello", "{written}");
    let read = wait_until(Duration::from_secs(10), || {
        let (status, v) = get_json(&format!("{front}/data"));
        status == StatusCode::OK && v["row"]["value"] == "hello" && v["postgres_role"] == "standby"
    });
    assert!(read, "the write never showed on a standby");
    for bad in ["not json", r#"{"value": 3}"#, r#"{"value":"x","more":1}"#] {
        let r = client
            .post(format!("{front}/data"))
            .body(bad)
            .send()
            .expect("POST");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = r.json().expect("JSON");
        assert_eq!(body["error"], "bad_body", "{body}");
    }

    // A standby frozen by SIGSTOP: its checks time out, it leaves the pool, reads go on.
    let data_dir = data.display().to_string();
    let out = run_keel(&["chaos", "--data-dir", &data_dir, "pause", "pg2"]);
    assert!(out.success(), "{out}");
    let admin = url_for(ports[1]);
    assert!(
        wait_until(Duration::from_secs(15), || !in_read_pool(&admin, "pg2")),
        "pg2 stayed in the pool while paused"
    );
    for _ in 0..10 {
        let (status, v) = get_json(&format!("{front}/data"));
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["postgres_node"], "pg3", "{v}");
    }
    let out = run_keel(&["chaos", "--data-dir", &data_dir, "resume", "pg2"]);
    assert!(out.success(), "{out}");
    assert!(
        wait_until(Duration::from_secs(15), || in_read_pool(&admin, "pg2")),
        "pg2 never came back after resume"
    );
    // All three down: /data answers 503 with the reason, at once rather than hanging;
    // one standby back, and reads work again without restarting anything.
    for server in ["pg1", "pg2", "pg3"] {
        let out = run_keel(&["chaos", "--data-dir", &data_dir, "kill", server]);
        assert!(out.success(), "{out}");
    }
    // A hang would fail get_json: its client gives up after 10 s.
    let (status, v) = get_json(&format!("{front}/data"));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"], "postgres_unavailable", "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("PostgreSQL did not answer a read")),
        "{v}"
    );
    let r = client
        .post(format!("{front}/data"))
        .body(r#"{"value":"x"}"#)
        .send()
        .expect("POST");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let out = run_keel(&["chaos", "--data-dir", &data_dir, "restart", "pg2"]);
    assert!(out.success(), "{out}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (status, v) = get_json(&format!("{front}/data"));
            status == StatusCode::OK && v["postgres_node"] == "pg2"
        }),
        "reads never came back through pg2"
    );

    pg.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        pg.wait_timeout(Duration::from_secs(30)).is_some(),
        "keel pg did not stop"
    );
    assert!(pg.log_text().contains("pg2 stopped"), "{}", pg.log_report());
}

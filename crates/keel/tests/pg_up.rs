//! The PostgreSQL homework, for real: `keel up --postgres` runs a primary and two
//! streaming standbys behind the proxy's TCP ports and two services whose `/data` reads
//! through the read-only port. Under `keel load`, both services and both standbys answer;
//! a standby killed with kill -9 costs no request and leaves the spread, and comes back
//! when restarted; a service killed costs no GET.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
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

#[test]
fn the_homeworks_three_scenarios_under_load() {
    let dir = tempdir();
    // The postgres account runs the servers: it must reach the data directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let data = dir.path().join("keel-data");
    let pg_port = free_port_range(3).to_string();
    let tcp_port = free_port_range(2).to_string();
    let up = KeelUp::start(
        &data,
        2,
        &["--postgres", "--pg-port", &pg_port, "--tcp-port", &tcp_port],
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
    let service_port = free_port_range(2);
    let args: Vec<String> = vec![
        "pg".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--pg-port".into(),
        pg_port.to_string(),
        "--tcp-port".into(),
        tcp_port.to_string(),
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

//! `keel up`: a whole data tier as child processes, stopped cleanly, found again by a
//! second `keel up`, never restarting what dies.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use support::{KeelProcess, StatusCode};

/// Starts `keel up` with 2 nodes on `base` and waits for its banner.
fn up(data_dir: &Path, base: u16) -> KeelProcess {
    let data = data_dir.display().to_string();
    let base_port = base.to_string();
    // Captured even with KEEL_TEST_LOG=1: the test reads the banner.
    let mut up = KeelProcess::spawn_captured(
        "up",
        &["up", "--data-dir", &data, "--base-port", &base_port],
    );
    let ready = support::wait_until(Duration::from_secs(20), || {
        up.log_text().contains("keel data tier is up") || !up.is_running()
    });
    assert!(
        ready && up.is_running(),
        "keel up did not come up\n{}",
        up.log_report()
    );
    up
}

/// The pids the banner lists, by node name.
fn pids(up: &KeelProcess) -> Vec<(String, u32)> {
    up.log_text()
        .lines()
        .filter(|l| l.starts_with("  app") && l.contains(" pid "))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            Some((words.first()?.to_string(), words.last()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn up_serves_writes_stops_on_sigterm_and_a_second_up_finds_the_data() {
    let dir = support::tempdir();
    let data = dir.path().join("keel-data");
    let base = support::free_port_range(2);
    let (primary, standby) = (support::url_for(base), support::url_for(base + 1));

    let mut first = up(&data, base);
    let nodes = pids(&first);
    assert_eq!(
        nodes.len(),
        2,
        "two pids in the banner\n{}",
        first.log_report()
    );

    let token_file = data.join("admin.token");
    let token = std::fs::read_to_string(&token_file).expect("admin token written");
    let mode = std::fs::metadata(&token_file)
        .expect("token metadata")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the token is readable by its owner only"
    );

    let resp = support::put_kv(&primary, "greeting", "hello");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        support::get_text(&format!("{standby}/v1/kv/greeting")),
        (StatusCode::OK, "hello".to_owned()),
        "replicated to app2"
    );
    let (_, health) = support::get_json(&format!("{primary}/health"));
    assert_eq!(health["node"], "app1");
    assert_eq!(health["role"], "primary");

    let status = first.terminate();
    assert!(
        status.success(),
        "keel up exits 0 on SIGTERM: {status:?}\n{}",
        first.log_report()
    );
    for (name, pid) in &nodes {
        assert!(
            support::wait_until(Duration::from_secs(2), || !support::pid_alive(*pid)),
            "{name} (pid {pid}) outlived keel up\n{}",
            first.log_report()
        );
    }
    let log = first.log_text();
    assert!(log.contains("app1 stopped"), "{log}");
    assert!(log.contains("app2 stopped"), "{log}");
    assert!(
        log.contains("app1 | "),
        "children's output is prefixed: {log}"
    );

    let mut second = up(&data, base);
    assert!(
        second.log_text().contains("(kept)"),
        "{}",
        second.log_report()
    );
    assert_eq!(
        std::fs::read_to_string(&token_file).expect("token"),
        token,
        "the token of the first run is kept"
    );
    for url in [&primary, &standby] {
        assert_eq!(
            support::get_text(&format!("{url}/v1/kv/greeting")),
            (StatusCode::OK, "hello".to_owned()),
            "{url} found its data again"
        );
    }
    second.terminate();
}

#[test]
fn a_killed_primary_is_reported_and_not_restarted() {
    let dir = support::tempdir();
    let data = dir.path().join("keel-data");
    let base = support::free_port_range(2);
    let mut tier = up(&data, base);
    let app1 = pids(&tier)
        .into_iter()
        .find(|(name, _)| name == "app1")
        .map(|(_, pid)| pid)
        .expect("app1's pid in the banner");

    // The seed's flow: kill the primary through the client, with the token `keel up` wrote.
    let out = support::run_keel_in(
        &["client", "--node", &support::url_for(base), "kill-primary"],
        &[],
        Some(dir.path()),
    );
    assert!(out.success(), "{out}");

    assert!(
        support::wait_until(Duration::from_secs(5), || tier
            .log_text()
            .contains("app1 exited (signal 9)")),
        "{}",
        tier.log_report()
    );
    assert!(!support::pid_alive(app1));
    assert!(tier.is_running(), "keel up keeps running");
    let (status, health) = support::get_json(&format!("{}/health", support::url_for(base + 1)));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["node"], "app2");
    // Never restarted: the port stays dead.
    assert!(
        reqwest::blocking::get(format!("{}/health", support::url_for(base))).is_err(),
        "app1 must not come back by itself"
    );
    assert!(tier.terminate().success());
}

#[test]
fn a_taken_port_fails_before_anything_starts() {
    let dir = support::tempdir();
    let base = support::free_port_range(2);
    let _held = std::net::TcpListener::bind(("127.0.0.1", base + 1)).expect("hold a port");
    let data = dir.path().join("keel-data").display().to_string();
    let out = support::run_keel(&["up", "--data-dir", &data, "--base-port", &base.to_string()]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains(&format!("port {} (for app2) is already in use", base + 1)),
        "{out}"
    );
    assert!(!out.stdout.contains(" | "), "no node was started: {out}");
}

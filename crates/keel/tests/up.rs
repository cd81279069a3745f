//! `keel up`: a monitor and its nodes as child processes; the monitor's events printed as
//! they happen; stopped monitor first; found again by a second `keel up`; never
//! restarting what dies.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{KeelUp, StatusCode};

/// The position of `needle` in `haystack`, for ordering assertions.
fn at(haystack: &str, needle: &str) -> usize {
    haystack
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the output:\n{haystack}"))
}

/// Checks the order `keel up` stopped its children in: the front door first; then the
/// monitor, so that nothing fails over while the tier stops; then the primary, while its
/// standby still acknowledges; then the standby. Returns where the monitor's stop is.
fn assert_stop_order(log: &str) -> usize {
    let (f, m, p, s) = (
        at(log, "proxy stopped"),
        at(log, "monitor stopped"),
        at(log, "app1 stopped"),
        at(log, "app2 stopped"),
    );
    assert!(
        f < m && m < p && p < s,
        "stop order proxy, monitor, app1, app2:\n{log}"
    );
    m
}

#[test]
fn up_elects_app1_prints_the_events_stops_the_monitor_first_and_a_second_up_finds_the_data() {
    let dir = support::tempdir();
    let data = dir.path().join("keel-data");
    // --verbose: the nodes' own info logs are shown, prefixed with their names.
    let mut first = KeelUp::start(&data, 2, &["--verbose"]);
    let (primary, standby) = (first.node_url(1), first.node_url(2));
    let log = first.proc.log_text();
    assert!(
        log.contains("monitor  primary elected: app1 is primary in epoch 1"),
        "the election is printed as an event\n{log}"
    );
    assert!(log.contains("monitor  registered: app2"), "{log}");
    let prefixed = |name: &str| {
        log.lines()
            .any(|l| l.starts_with(&format!("{name} ")) && l.contains(" | "))
    };
    assert!(prefixed("app1"), "node logs are prefixed: {log}");
    assert!(prefixed("monitor"), "{log}");
    assert!(log.contains("keel client kill-primary") || log.contains("kill-primary --watch"));
    assert!(log.contains("failover"), "{log}");
    let pids = first.pids();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["monitor", "app1", "app2", "proxy", "service1", "service2"],
        "{log}"
    );
    assert_eq!(first.primary().as_deref(), Some("app1"));

    // The front door: `/` over the services, each counting visits in the data tier
    // through the proxy's cluster route.
    let (status, hello) = support::get_text(&format!("{}/", first.proxy_url));
    assert_eq!(status, StatusCode::OK, "{hello}");
    assert!(hello.starts_with("Hello from service"), "{hello}");
    assert!(hello.contains("visits: 1 (data node app1)"), "{hello}");
    let (status, visits) = support::get_json(&format!("{}/v1/counters/visits", first.proxy_url));
    assert_eq!(
        (status, visits["value"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{visits}"
    );

    let mode = std::fs::metadata(&first.token_file)
        .expect("token metadata")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the token is readable by its owner only"
    );
    let token = std::fs::read_to_string(&first.token_file).expect("admin token written");

    let resp = support::put_kv(&primary, "greeting", "hello");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        support::get_text(&format!("{standby}/v1/kv/greeting")),
        (StatusCode::OK, "hello".to_owned()),
        "replicated to app2"
    );

    let status = first.proc.terminate();
    assert!(
        status.success(),
        "keel up exits 0 on SIGTERM: {status:?}\n{}",
        first.proc.log_report()
    );
    for (name, pid) in &pids {
        assert!(
            support::wait_until(Duration::from_secs(2), || !support::pid_alive(*pid)),
            "{name} (pid {pid}) outlived keel up\n{}",
            first.proc.log_report()
        );
    }
    let log = first.proc.log_text();
    let m = assert_stop_order(&log);
    assert!(
        !log[m..].contains("failover started"),
        "nothing fails over during shutdown:\n{log}"
    );

    let second = KeelUp::start_on(&data, 2, first.base_port, first.monitor_port, &[]);
    let log = second.proc.log_text();
    assert!(log.contains("(kept)"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&second.token_file).expect("token"),
        token,
        "the token of the first run is kept"
    );
    assert!(
        log.contains("monitor started at version"),
        "the monitor reloaded its state: {log}"
    );
    for url in [&primary, &standby] {
        assert_eq!(
            support::get_text(&format!("{url}/v1/kv/greeting")),
            (StatusCode::OK, "hello".to_owned()),
            "{url} found its data again"
        );
    }
}

#[test]
fn a_killed_primary_is_printed_as_a_promotion_and_nothing_is_restarted() {
    let dir = support::tempdir();
    let mut tier = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let app1 = tier
        .pids()
        .into_iter()
        .find(|(name, _)| name == "app1")
        .map(|(_, pid)| pid)
        .expect("app1's pid in the banner");

    // The seed's flow: kill the primary through the client.
    let out = tier.client(&["kill-primary", "--watch"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("killed app1 (the primary)"), "{out}");
    assert!(out.stdout.contains("app2 is the primary now"), "{out}");

    assert!(
        tier.wait_for_output("failover done: app2 is primary"),
        "{}",
        tier.proc.log_report()
    );
    let log = tier.proc.log_text();
    for step in [
        "app1 exited (signal 9); keel up does not restart it",
        "heartbeat missed: no heartbeat from app1",
        "suspected: primary app1",
        "promoted: app2",
    ] {
        assert!(log.contains(step), "{step:?} is printed:\n{log}");
    }
    assert!(
        log.contains(&format!(
            "To start it again: keel chaos --data-dir {} restart app1",
            dir.path().join("keel-data").display()
        )),
        "the command to start app1 again is printed:\n{log}"
    );
    assert!(!support::pid_alive(app1));
    assert_eq!(tier.primary().as_deref(), Some("app2"));
    assert!(tier.proc.is_running(), "keel up keeps running");
    // Never restarted: the port stays dead.
    assert!(
        reqwest::blocking::get(format!("{}/health", tier.node_url(1))).is_err(),
        "app1 must not come back by itself"
    );
    assert!(tier.proc.terminate().success());
}

/// On `--store log` too: the restarted node replays its `keel.log`.
#[test]
fn with_restart_on_failure_a_killed_primary_on_the_log_store_comes_back_as_a_promotable_standby() {
    let dir = support::tempdir();
    let data = dir.path().join("keel-data");
    let mut tier = KeelUp::start(&data, 2, &["--restart", "on-failure", "--store", "log"]);
    for node in ["app1", "app2"] {
        assert!(
            data.join(node).join("keel.log").is_file(),
            "{node} runs on the log store"
        );
    }
    let out = tier.client(&["kill-primary", "--watch"]);
    assert!(out.success(), "{out}");
    assert!(
        tier.wait_for_output("keel up: restarted app1"),
        "{}",
        tier.proc.log_report()
    );
    let log = tier.proc.log_text();
    assert!(
        log.contains(
            "app1 exited (signal 9); keel up starts it again in 1s (--restart on-failure)"
        ),
        "{log}"
    );
    assert!(
        support::wait_until(Duration::from_secs(20), || tier.promotable("app1")),
        "app1 came back but never became a promotable standby\n{}",
        tier.proc.log_report()
    );
    assert_eq!(tier.primary().as_deref(), Some("app2"));
    assert!(tier.proc.terminate().success());
}

#[test]
fn children_die_with_a_keel_up_killed_by_sigkill() {
    let dir = support::tempdir();
    let mut tier = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let children = tier.pids();
    assert!(children.len() >= 6, "{children:?}");
    // keel up alone, not its process group: what a crash or the OOM killer does.
    tier.proc.signal(nix::sys::signal::Signal::SIGKILL);
    tier.proc.wait();
    let gone = support::wait_until(Duration::from_secs(2), || {
        children.iter().all(|(_, pid)| !support::pid_alive(*pid))
    });
    let left: Vec<_> = children
        .iter()
        .filter(|(_, pid)| support::pid_alive(*pid))
        .collect();
    assert!(gone, "still running 2 s after keel up died: {left:?}");
}

#[test]
fn a_second_up_starts_the_recorded_primary_first_even_when_it_is_not_app1() {
    let dir = support::tempdir();
    let data = dir.path().join("keel-data");
    let mut first = KeelUp::start(&data, 2, &[]);
    let out = first.client(&["failover", "--to", "app2"]);
    assert!(out.success(), "{out}");
    assert_eq!(first.primary().as_deref(), Some("app2"));
    assert!(first.proc.terminate().success());

    let second = KeelUp::start_on(&data, 2, first.base_port, first.monitor_port, &[]);
    let log = second.proc.log_text();
    assert!(
        log.lines()
            .any(|l| l.trim_start().starts_with("app2") && l.contains(" primary ")),
        "the banner names app2 as the primary:\n{log}"
    );
    assert_eq!(second.primary().as_deref(), Some("app2"));
    let out = second.client(&["set", "after=restart"]);
    assert!(out.success(), "{out}");
}

#[test]
fn a_taken_port_fails_before_anything_starts() {
    let dir = support::tempdir();
    let base = support::free_port_range(2);
    let monitor = support::free_port();
    let data = dir.path().join("keel-data").display().to_string();
    let up = |base: u16, monitor: u16| {
        support::run_keel(&[
            "up",
            "--data-dir",
            &data,
            "--base-port",
            &base.to_string(),
            "--monitor-port",
            &monitor.to_string(),
        ])
    };

    let held = std::net::TcpListener::bind(("127.0.0.1", base + 1)).expect("hold a port");
    let out = up(base, monitor);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains(&format!("port {} (for app2) is already in use", base + 1)),
        "{out}"
    );
    assert!(!out.stdout.contains(" | "), "nothing was started: {out}");
    drop(held);

    let _held = std::net::TcpListener::bind(("127.0.0.1", monitor)).expect("hold a port");
    let out = up(base, monitor);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains(&format!("port {monitor} (for monitor) is already in use")),
        "{out}"
    );
    assert!(out.stderr.contains("--monitor-port"), "{out}");
}

/// A Ctrl-C in a terminal reaches every process of its process group at once. The
/// children of `keel up` leave it to `keel up`, which stops them in its order.
#[test]
fn ctrl_c_to_the_whole_process_group_still_stops_in_order() {
    let dir = support::tempdir();
    let mut tier = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let group = nix::unistd::Pid::from_raw(i32::try_from(tier.proc.pid()).expect("pid"));
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).expect("SIGINT the group");
    let status = tier
        .proc
        .wait_timeout(Duration::from_secs(30))
        .expect("keel up exits after Ctrl-C");
    assert!(status.success(), "{}", tier.proc.log_report());
    let log = tier.proc.log_text();
    assert_stop_order(&log);
    assert!(
        !log.contains("failover started"),
        "nothing fails over:\n{log}"
    );
}

#[test]
fn up_with_tls_runs_every_process_on_tls_and_its_banner_commands_work() {
    let dir = support::tempdir();
    let data = dir.path().join("keel-data");
    let up = KeelUp::start(&data, 2, &["--tls"]);
    let log = up.proc.log_text();
    let ca = data.join("tls").join("ca.pem");
    assert!(log.contains(&format!("--tls-ca {}", ca.display())), "{log}");
    assert!(log.contains("https://127.0.0.1"), "{log}");
    for (file, secret) in [
        ("ca.key", true),
        ("ca.pem", false),
        ("app1.key", true),
        ("proxy.pem", false),
    ] {
        let mode = std::fs::metadata(data.join("tls").join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode == 0o600, secret, "{file} has mode {mode:o}");
    }
    let secret_mode = std::fs::metadata(data.join("cluster.secret"))
        .expect("cluster.secret")
        .permissions()
        .mode();
    assert_eq!(secret_mode & 0o777, 0o600);

    // The front door, the services behind it and the data tier behind them, all on TLS.
    let pem = std::fs::read(&ca).expect("ca.pem");
    let http = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("a certificate")])
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let front = up.proxy_url.replace("http://", "https://");
    let hello = http
        .get(format!("{front}/"))
        .send()
        .and_then(|r| r.text())
        .expect("GET / through the TLS front door");
    assert!(hello.starts_with("Hello from service"), "{hello}");
    assert!(hello.contains("visits: 1 (data node app1)"), "{hello}");
    assert!(
        reqwest::blocking::get(format!("{}/", up.proxy_url)).is_err(),
        "the front door answered plain HTTP"
    );
    let monitor = up.monitor_url.replace("http://", "https://");
    let ca_arg = ca.display().to_string();
    let out = support::run_keel(&[
        "client",
        "--monitor",
        &monitor,
        "--tls-ca",
        &ca_arg,
        "set",
        "greeting=hello",
    ]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("greeting = hello"), "{out}");
    let got = http
        .get(format!("{front}/v1/kv/greeting"))
        .send()
        .and_then(|r| r.text())
        .expect("GET through the proxy");
    assert_eq!(got, "hello");

    // keel load through the TLS front door, its writes read back from the TLS tier.
    let out = support::run_keel(&[
        "load",
        &format!("{front}/"),
        "--tls-ca",
        &ca_arg,
        "--requests",
        "60",
        "--concurrency",
        "2",
        "--write-ratio",
        "0.5",
        "--verify",
        "--monitor",
        &monitor,
        "--quiet",
    ]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("lost acknowledged writes: 0"), "{out}");
}

/// The monitor that leads among `urls`, per whichever answers.
fn monitors_leader(urls: &str) -> Option<String> {
    urls.split(',').find_map(|url| {
        let view: serde_json::Value = support::http_client()
            .get(format!("{url}/v1/cluster"))
            .timeout(Duration::from_millis(500))
            .send()
            .ok()?
            .json()
            .ok()?;
        let group = &view["monitors"];
        // Only the leader's own word: a follower may still name a dead leader.
        (group["leader"] == group["answered_by"])
            .then(|| group["leader"].as_str().map(str::to_owned))
            .flatten()
    })
}

#[test]
fn up_with_three_monitors_lives_through_the_leaders_death_and_fails_over_through_the_next() {
    let dir = support::tempdir();
    let data = dir.path().join("keel-data");
    let (base, mon) = support::ports_for_three_monitors();
    let mut tier = KeelUp::start_on(&data, 2, base, mon, &["--monitors", "3"]);
    let urls: Vec<String> = (0..3).map(|k| support::url_for(mon + k)).collect();
    let urls = urls.join(",");
    let banner = tier.proc.log_text();
    for m in ["m1", "m2", "m3"] {
        assert!(
            banner
                .lines()
                .any(|l| l.trim_start().starts_with(m) && l.contains(" pid ")),
            "{m} in the banner:\n{banner}"
        );
    }
    assert!(
        banner.contains(" leader "),
        "the banner names the leader:\n{banner}"
    );
    assert!(
        banner.contains("keel chaos"),
        "and how to kill it:\n{banner}"
    );

    let leader = monitors_leader(&urls).expect("a leader");
    // A verified load through the front door, given every monitor, across both deaths.
    let target = format!("{}/", tier.proxy_url);
    let mut load = support::spawn_verified_load(&target, "8s", &["--monitor", &urls]);
    std::thread::sleep(Duration::from_millis(500));
    let data_arg = data.display().to_string();
    let out = support::run_keel(&["chaos", "--data-dir", &data_arg, "kill", &leader]);
    assert!(out.success(), "{out}");
    assert!(
        support::wait_until(Duration::from_secs(10), || monitors_leader(&urls)
            .is_some_and(|l| l != leader)),
        "no monitor took over from {leader}\n{}",
        tier.proc.log_report()
    );
    // Writes go on, through the front door and by the client given every monitor.
    let token = tier.token_file.display().to_string();
    let client = |args: &[&str]| {
        let mut all = vec!["client", "--monitor", &urls, "--token-file", &token];
        all.extend_from_slice(args);
        support::run_keel(&all)
    };
    let out = client(&["set", "during=1"]);
    assert!(out.success(), "{out}");
    // The primary dies: the new leader fails it over.
    let out = client(&["kill-primary", "--watch"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("app2 is the primary now"), "{out}");
    let out = client(&["get", "during"]);
    assert!(out.success() && out.stdout.contains('1'), "{out}");
    let status = load
        .wait_timeout(Duration::from_secs(60))
        .expect("keel load ends after its 8 s and the read-back");
    let report = load.log_text();
    assert!(status.success(), "{report}");
    assert!(report.contains("lost acknowledged writes: 0"), "{report}");
    assert!(support::acknowledged_writes(&report) > 0, "{report}");
    // Its report says once that another monitor leads, and shows the failover that
    // monitor ran.
    assert_eq!(
        report.matches("the monitors' leader is now").count(),
        1,
        "{report}"
    );
    assert!(report.contains("promoted: app2"), "{report}");
    assert!(tier.proc.terminate().success());
}

#[test]
fn a_monitor_leader_cut_off_from_the_others_decides_nothing_and_catches_up_when_healed() {
    let dir = support::tempdir();
    let data = dir.path().join("keel-data");
    let (base, mon) = support::ports_for_three_monitors();
    let tier = KeelUp::start_on(&data, 2, base, mon, &["--monitors", "3"]);
    let all: Vec<String> = (0..3).map(|k| support::url_for(mon + k)).collect();
    let old = monitors_leader(&all.join(",")).expect("a leader");
    let others: Vec<String> = ["m1", "m2", "m3"]
        .iter()
        .zip(&all)
        .filter(|(name, _)| **name != old)
        .map(|(_, url)| url.clone())
        .collect();
    let others = others.join(",");
    let old_url = all[old[1..].parse::<usize>().expect("mN") - 1].clone();

    // Watch the nodes the whole time: never two primaries holding a lease.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (stop, urls) = (stop.clone(), (tier.node_url(1), tier.node_url(2)));
        std::thread::spawn(move || {
            let probe = KeelUpNodes(urls);
            let mut worst = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = probe.leaseholders();
                if now.len() > worst.len() {
                    worst = now;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            worst
        })
    };

    let data_arg = data.display().to_string();
    let out = support::run_keel(&["chaos", "--data-dir", &data_arg, "partition", &old]);
    assert!(out.success(), "{out}");
    assert!(
        support::wait_until(Duration::from_secs(10), || monitors_leader(&others)
            .is_some()),
        "the other two elected no leader\n{}",
        tier.proc.log_report()
    );
    // Cut off, the old leader decides nothing: a switchover asked of it is refused in
    // bounded time, and changes nothing.
    let started = std::time::Instant::now();
    let resp = support::http_client()
        .post(format!("{old_url}/v1/failover"))
        .bearer_auth(
            std::fs::read_to_string(&tier.token_file)
                .expect("token")
                .trim(),
        )
        .send()
        .expect("POST failover");
    // Refused either way: by a machine that cannot commit (503 not_leader) or by one that
    // sees no safe target from where it stands (409); never carried out.
    let status = resp.status();
    let body = resp.text().unwrap_or_default();
    assert!(
        status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            || status == reqwest::StatusCode::CONFLICT,
        "{status}: {body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The majority decides: a switchover through it works while the old leader is cut off.
    let token = tier.token_file.display().to_string();
    let client = |args: &[&str]| {
        let mut all = vec!["client", "--monitor", &others, "--token-file", &token];
        all.extend_from_slice(args);
        support::run_keel(&all)
    };
    let out = client(&["failover", "--to", "app2"]);
    assert!(out.success(), "{out}");

    // Healed, the old leader catches up: the same epoch and primary as the others.
    let out = support::run_keel(&["chaos", "--data-dir", &data_arg, "heal"]);
    assert!(out.success(), "{out}");
    let view_of = |url: &str| -> Option<serde_json::Value> {
        support::http_client()
            .get(format!("{url}/v1/cluster"))
            .send()
            .ok()?
            .json()
            .ok()
    };
    assert!(
        support::wait_until(Duration::from_secs(10), || {
            let (a, b) = (view_of(&old_url), others.split(',').find_map(view_of));
            a.zip(b).is_some_and(|(a, b)| {
                a["epoch"] == b["epoch"]
                    && a["primary"]["node"] == "app2"
                    && b["primary"]["node"] == "app2"
            })
        }),
        "the old leader did not catch up: {:?}",
        view_of(&old_url)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = watch.join().expect("watcher");
    assert!(
        worst.len() <= 1,
        "two primaries held a lease at once: {worst:?}"
    );
}

/// The nodes' URLs, for the watcher thread.
struct KeelUpNodes((String, String));

impl KeelUpNodes {
    /// The nodes that, per their own `/health`, are primary and hold the lease.
    fn leaseholders(&self) -> Vec<String> {
        [&self.0.0, &self.0.1]
            .iter()
            .enumerate()
            .filter_map(|(k, url)| {
                let h: serde_json::Value = support::http_client()
                    .get(format!("{url}/health"))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .ok()?
                    .json()
                    .ok()?;
                (h["role"] == "primary" && h["lease"] == true && h["fenced_by"].is_null())
                    .then(|| format!("app{}", k + 1))
            })
            .collect()
    }
}

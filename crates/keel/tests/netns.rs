//! `keel up --netns` as root: the monitor and the nodes in network namespaces of their
//! own, partitions carried out by the kernel, and nothing left behind once it stops.
//!
//! These tests need root (namespaces, veths and a bridge are root's to make). Run as
//! another user, each says loudly that it was skipped and passes: the refusal itself is
//! pinned by the unit tests of `keel-chaos/src/netns.rs`, with an injected uid.

mod support;

use std::io::Write as _;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{KeelUp, Output, StatusCode, run_keel, wait_until};

/// Whether the tests run as root (the effective uid in `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            line.split_whitespace().nth(2)?.parse::<u32>().ok()
        })
        == Some(0)
}

/// `false`, after a line nobody can miss, when the test cannot run here.
fn can_run(test: &str) -> bool {
    if is_root() {
        return true;
    }
    // Straight to the stream, not through `eprintln!`, which the harness captures and
    // shows only for a failing test: a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** {test}: skipped: needs root (keel up --netns makes network namespaces) ***\n"
    );
    false
}

/// `ip <args>`: its standard output (panics when it fails).
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `keel up --netns`, stopped with SIGTERM when dropped, so that it removes its
/// namespaces even when a test fails half-way (the harness's SIGKILL alone would leave
/// them).
struct Stack {
    up: KeelUp,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.up.proc.is_running() {
            self.up.proc.signal(Signal::SIGTERM);
            let _ = self.up.proc.wait_timeout(Duration::from_secs(20));
        }
    }
}

impl Stack {
    fn start(dir: &tempfile::TempDir) -> Stack {
        Stack {
            up: KeelUp::start(&dir.path().join("keel-data"), 2, &["--netns"]),
        }
    }

    /// `keel chaos --data-dir <the stack's> <args…>`.
    fn chaos(&self, args: &[&str]) -> Output {
        let data = self.up.data_dir.display().to_string();
        let mut all = vec!["chaos", "--data-dir", &data];
        all.extend_from_slice(args);
        run_keel(&all)
    }

    /// The monitor's URL, as `<data-dir>/up.json` gives it.
    fn monitor_url(&self) -> String {
        let text = std::fs::read_to_string(self.up.data_dir.join("up.json")).expect("up.json");
        let up: serde_json::Value = serde_json::from_str(&text).expect("up.json is JSON");
        up["monitor"].as_str().expect("a monitor URL").to_owned()
    }

    /// The monitor's view.
    fn view(&self) -> serde_json::Value {
        let (status, view) = support::get_json(&format!("{}/v1/cluster", self.monitor_url()));
        assert_eq!(status, StatusCode::OK, "{view}");
        view
    }

    /// The primary the monitor names, once no failover is running.
    fn primary(&self) -> Option<String> {
        let view = self.view();
        if view["failover_in_progress"] == true {
            return None;
        }
        view["primary"]["node"].as_str().map(str::to_owned)
    }

    /// The monitor's record of `node`.
    fn record(&self, node: &str) -> serde_json::Value {
        let view = self.view();
        view["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node"] == node).cloned())
            .unwrap_or_else(|| panic!("the monitor does not list {node}: {view}"))
    }

    /// `name`'s pid and URL, as `keel chaos list` shows them.
    fn listed(&self, name: &str) -> (u32, String) {
        let out = self.chaos(&["list"]);
        assert!(out.success(), "{out}");
        let words: Vec<String> = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed: {out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (
            words[3]
                .parse()
                .unwrap_or_else(|_| panic!("{name} runs: {out}")),
            words[4].clone(),
        )
    }

    /// What `keel up` recorded making: its namespaces and its interfaces.
    fn made(&self) -> (Vec<String>, Vec<String>) {
        let path = self.up.data_dir.join("netns.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let record: serde_json::Value = serde_json::from_str(&text).expect("netns.json is JSON");
        let names = |key: &str| -> Vec<String> {
            record[key]
                .as_array()
                .unwrap_or_else(|| panic!("{key} in {record}"))
                .iter()
                .map(|v| v.as_str().expect("a name").to_owned())
                .collect()
        };
        let mut links = names("veths");
        links.push(record["bridge"].as_str().expect("a bridge").to_owned());
        (names("namespaces"), links)
    }

    /// Stops `keel up` with SIGTERM and checks that it says so and removes everything it
    /// made: `ip netns list` and `ip link` show none of it.
    fn stop_and_check_clean(mut self) {
        let (namespaces, links) = self.made();
        let status = self.up.proc.terminate();
        let log = self.up.proc.log_text();
        assert!(status.success(), "{}", self.up.proc.log_report());
        assert!(
            log.contains("removed the network namespaces and interfaces"),
            "{}",
            self.up.proc.log_report()
        );
        let listed = ip(&["netns", "list"]);
        for ns in &namespaces {
            assert!(
                !listed
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ns)),
                "{ns} is left: {listed}"
            );
        }
        let all_links = ip(&["-o", "link", "show"]);
        for link in &links {
            assert!(
                !all_links.contains(&format!(": {link}:"))
                    && !all_links.contains(&format!(": {link}@")),
                "{link} is left: {all_links}"
            );
        }
        assert!(
            !self.up.data_dir.join("netns.json").exists(),
            "the record goes with what it listed"
        );
    }
}

/// The other node of a two-node tier.
fn other(node: &str) -> &'static str {
    if node == "app1" { "app2" } else { "app1" }
}

/// The primary, cut off in the kernel from the monitor, its standby and every client
/// while writes come through the front door: the monitor misses its heartbeats and
/// promotes the standby, writes succeed again, and after `heal` the old primary learns of
/// the new epoch and rejoins as a standby; every acknowledged write is still there, and
/// once `keel up` stops, none of its namespaces are.
#[test]
fn a_primary_cut_off_by_the_kernel_is_replaced_and_rejoins_fenced_after_heal() {
    if !can_run("a_primary_cut_off_by_the_kernel_is_replaced_and_rejoins_fenced_after_heal") {
        return;
    }
    let dir = support::tempdir();
    let stack = Stack::start(&dir);
    let banner = stack.up.proc.log_text();
    assert!(
        banner.contains("network namespaces") && banner.contains("the kernel drops packets"),
        "{banner}"
    );
    // The data tier listens on addresses of its own, in its own namespaces; up.json says
    // where, and that works from here.
    let monitor = stack.monitor_url();
    assert!(monitor.starts_with("http://10.77."), "{monitor}");
    let (namespaces, _) = stack.made();
    let old = stack.primary().expect("keel up names a primary");
    let new = other(&old);
    let (pid, url) = stack.listed(&old);
    assert!(url.starts_with("http://10.77."), "{url}");
    let ns = namespaces
        .iter()
        .find(|n| n.ends_with(&format!("-{old}")))
        .unwrap_or_else(|| panic!("a namespace for {old}: {namespaces:?}"));
    assert_eq!(ip(&["netns", "identify", &pid.to_string()]).trim(), ns);
    let (status, _) = support::get_text(&format!("{}/v1/counters/visits", stack.up.proxy_url));
    assert_eq!(status, StatusCode::OK, "the proxy reaches the data tier");

    // Writes and reads through the front door for the whole story; every acknowledged
    // write is read back through it at the end.
    let target = format!("{}/", stack.up.proxy_url);
    let mut load = support::spawn_verified_load(&target, "25s", &[]);
    std::thread::sleep(Duration::from_secs(3));

    let out = stack.chaos(&["partition", &old]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains(&format!(
            "partitioned {old} from monitor, {new}, clients (network namespaces: the kernel drops packets between them)"
        )),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || stack.primary().as_deref()
            == Some(new)),
        "the monitor promotes {new}: {}\n{}",
        stack.view(),
        stack.up.proc.log_report()
    );
    let log = stack.up.proc.log_text();
    assert!(
        log.contains(&format!("heartbeat missed: no heartbeat from {old}")),
        "the monitor noticed the silence: {log}"
    );
    assert!(
        wait_until(Duration::from_secs(15), || support::put_kv(
            &stack.up.proxy_url,
            "after-failover",
            "1"
        )
        .status()
            == StatusCode::OK),
        "writes go through the front door again: {}\n{}",
        stack.view(),
        stack.up.proc.log_report()
    );
    assert!(
        support::pid_alive(pid),
        "{old} was cut off, not killed: it runs on, alone"
    );

    let out = stack.chaos(&["heal"]);
    assert!(
        out.success()
            && out.stdout.contains(&format!("{old}–clients"))
            && out
                .stdout
                .contains("network namespaces: the kernel drops packets"),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let record = stack.record(&old);
            record["role"] == "standby" && record["promotable"] == true
        }),
        "{old} rejoins as a promotable standby: {}\n{}",
        stack.view(),
        stack.up.proc.log_report()
    );
    assert_eq!(stack.primary().as_deref(), Some(new));
    assert!(
        stack
            .up
            .proc
            .log_text()
            .contains(&format!("rejoined: {old}, a former primary")),
        "{}",
        stack.up.proc.log_report()
    );

    let status = load
        .wait_timeout(Duration::from_secs(120))
        .expect("keel load ends after its 25 s and the read-back");
    let report = load.log_text();
    assert!(status.success(), "{report}");
    assert!(report.contains("lost acknowledged writes: 0"), "{report}");
    let acknowledged = support::acknowledged_writes(&report);
    assert!(acknowledged > 50, "writes went through: {report}");

    stack.stop_and_check_clean();
}

/// A standby cut off from its primary only: the monitor still hears it, the primary
/// writes without it once it is out of the sync set; restarted, it comes back in its own
/// namespace, still cut off; healed, it catches up. The control API says how.
#[test]
fn a_standby_cut_off_from_its_primary_stays_cut_off_when_restarted() {
    if !can_run("a_standby_cut_off_from_its_primary_stays_cut_off_when_restarted") {
        return;
    }
    let dir = support::tempdir();
    let stack = Stack::start(&dir);
    let (namespaces, _) = stack.made();
    let primary = stack.primary().expect("keel up names a primary");
    let standby = other(&primary);
    let (_, standby_url) = stack.listed(standby);
    let (_, primary_url) = stack.listed(&primary);

    let out = stack.chaos(&["partition", standby, "--from", &primary]);
    assert!(
        out.success()
            && out.stdout.contains(&format!(
                "partitioned {standby} from {primary} (network namespaces"
            )),
        "{out}"
    );
    let out_of_sync = || {
        let record = stack.record(standby);
        record["sync"] == false && record["healthy"] == true
    };
    assert!(
        wait_until(Duration::from_secs(15), out_of_sync),
        "{standby} leaves the sync set but still heartbeats: {}\n{}",
        stack.view(),
        stack.up.proc.log_report()
    );
    assert_eq!(
        support::put_kv(&primary_url, "alone", "1").status(),
        StatusCode::OK,
        "the primary writes without it"
    );

    let out = stack.chaos(&["restart", standby]);
    assert!(
        out.success() && out.stdout.contains(&format!("restarted {standby}")),
        "{out}"
    );
    let (pid, _) = stack.listed(standby);
    let ns = namespaces
        .iter()
        .find(|n| n.ends_with(&format!("-{standby}")))
        .expect("a namespace for the standby");
    assert_eq!(
        ip(&["netns", "identify", &pid.to_string()]).trim(),
        ns,
        "restarted in its namespace"
    );
    assert!(
        wait_until(Duration::from_secs(10), || stack.record(standby)["healthy"]
            == true),
        "{}",
        stack.view()
    );
    // Nothing written since reaches it: the partition lives in its namespace.
    assert_eq!(
        support::put_kv(&primary_url, "still-alone", "2").status(),
        StatusCode::OK
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(out_of_sync(), "still out of sync: {}", stack.view());
    assert_eq!(
        support::get_text(&format!("{standby_url}/v1/kv/still-alone")).0,
        StatusCode::NOT_FOUND
    );

    // Healed through the control API itself: the answer names the method.
    let up: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stack.up.data_dir.join("up.json")).expect("up.json"),
    )
    .expect("up.json is JSON");
    let token = std::fs::read_to_string(&stack.up.token_file).expect("token");
    let resp = support::http_client()
        .post(format!("{}/v1/heal", up["control"].as_str().expect("url")))
        .bearer_auth(token.trim())
        .send()
        .expect("keel up answers");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().expect("JSON");
    assert_eq!(body["method"], "netns", "{body}");
    assert!(
        wait_until(
            Duration::from_secs(15),
            || stack.record(standby)["promotable"] == true
        ),
        "{standby} is back in sync: {}\n{}",
        stack.view(),
        stack.up.proc.log_report()
    );
    assert_eq!(
        support::get_text(&format!("{standby_url}/v1/kv/still-alone")),
        (StatusCode::OK, "2".to_owned())
    );

    stack.stop_and_check_clean();
}

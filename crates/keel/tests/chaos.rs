//! `keel chaos` against a real `keel up`: each action changes the process state it claims
//! to, only with the token.

mod support;

use std::time::Duration;

use support::{KeelUp, Output, pid_alive, run_keel, wait_until};

/// `keel chaos --data-dir <the stack's> <args…>`.
fn chaos(tier: &KeelUp, args: &[&str]) -> Output {
    let data = tier.data_dir.display().to_string();
    let mut all = vec!["chaos", "--data-dir", &data];
    all.extend_from_slice(args);
    run_keel(&all)
}

/// The pid `keel chaos list` shows for `name`, and its state.
fn listed(tier: &KeelUp, name: &str) -> (Option<u32>, String) {
    let out = chaos(tier, &["list"]);
    assert!(out.success(), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not listed: {out}"))
        .to_owned();
    let words: Vec<&str> = line.split_whitespace().collect();
    (
        words.get(3).and_then(|p| p.parse().ok()),
        words[1].to_owned(),
    )
}

/// The kernel's one-letter state of a process (`T` when stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
fn kill_pause_resume_and_restart_do_what_they_say() {
    let dir = support::tempdir();
    let tier = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let (pid, state) = listed(&tier, "app2");
    let pid = pid.expect("app2 runs");
    assert_eq!(state, "running");

    let out = chaos(&tier, &["pause", "app2"]);
    assert!(out.success() && out.stdout.contains("paused app2"), "{out}");
    assert!(wait_until(Duration::from_secs(5), || proc_state(pid) == Some('T')));
    assert_eq!(listed(&tier, "app2").1, "paused");
    let out = chaos(&tier, &["pause", "app2"]);
    assert!(
        !out.success() && out.stderr.contains("already paused"),
        "{out}"
    );

    let out = chaos(&tier, &["resume", "app2"]);
    assert!(
        out.success() && out.stdout.contains("resumed app2"),
        "{out}"
    );
    assert!(wait_until(Duration::from_secs(5), || proc_state(pid)
        .is_some_and(|s| s != 'T')));

    let out = chaos(&tier, &["kill", "app2"]);
    assert!(out.success() && out.stdout.contains("killed app2"), "{out}");
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(pid)));
    assert!(wait_until(Duration::from_secs(5), || listed(&tier, "app2")
        .1
        == "exited"));

    let out = chaos(&tier, &["restart", "app2"]);
    assert!(
        out.success() && out.stdout.contains("restarted app2"),
        "{out}"
    );
    let (new_pid, state) = listed(&tier, "app2");
    let new_pid = new_pid.expect("app2 runs again");
    assert_ne!(new_pid, pid);
    assert!(pid_alive(new_pid));
    assert_eq!(state, "running");
    let (status, health) = support::get_json(&format!("{}/health", tier.node_url(2)));
    assert_eq!(status, support::StatusCode::OK, "{health}");
}

#[test]
fn chaos_needs_the_token_and_names_what_it_cannot_find() {
    let dir = support::tempdir();
    let tier = KeelUp::start(&dir.path().join("keel-data"), 1, &[]);
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token-0123456789abcdef").expect("write");
    let wrong_arg = wrong.display().to_string();
    let out = chaos(&tier, &["--token-file", &wrong_arg, "kill", "app1"]);
    assert!(!out.success() && out.stderr.contains("401"), "{out}");
    assert_eq!(listed(&tier, "app1").1, "running", "nothing was done");
    let out = chaos(&tier, &["kill", "app9"]);
    assert!(
        !out.success() && out.stderr.contains("app1"),
        "names what runs: {out}"
    );
    let out = run_keel(&["chaos", "--data-dir", "/nonexistent", "list"]);
    assert!(
        !out.success() && out.stderr.contains("is `keel up` running"),
        "{out}"
    );
}

/// The promise under faults: a seeded minute of kills and pauses of the data nodes, under
/// reads and writes through the proxy, and every acknowledged write is still there.
#[test]
fn a_seeded_minute_of_kills_and_pauses_loses_no_acknowledged_write() {
    let dir = support::tempdir();
    let tier = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let data = tier.data_dir.display().to_string();
    let chaos = support::KeelProcess::spawn_captured(
        "chaos",
        &[
            "chaos",
            "--data-dir",
            &data,
            "run",
            "--duration",
            "60s",
            "--seed",
            "42",
            "--faults",
            "kill,pause",
        ],
    );
    let target = format!("{}/", tier.proxy_url);
    let mut load = support::KeelProcess::spawn_captured(
        "load",
        &[
            "load",
            &target,
            "--concurrency",
            "4",
            "--duration",
            "62s",
            "--write-ratio",
            "0.5",
            "--verify",
            "--monitor",
            &tier.monitor_url,
            "--quiet",
        ],
    );
    let load_status = load
        .wait_timeout(Duration::from_secs(180))
        .expect("keel load ends after its 62 s and the read-back");
    let report = load.log_text();
    let mut chaos = chaos;
    let status = chaos
        .wait_timeout(Duration::from_secs(30))
        .expect("chaos run ends with its minute");
    let timeline = chaos.log_text();
    assert!(status.success(), "{timeline}");
    assert!(
        timeline.contains("killed app") && timeline.contains("paused app"),
        "{timeline}"
    );
    assert!(timeline.contains("chaos over"), "{timeline}");
    assert!(load_status.success(), "{report}\n{timeline}");
    assert!(
        report.contains("lost acknowledged writes: 0"),
        "{report}\n{timeline}"
    );
    let acknowledged: u64 = report
        .lines()
        .find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words.first() == Some(&"writes")).then(|| words.get(4)?.parse().ok())?
        })
        .unwrap_or(0);
    assert!(
        acknowledged > 100,
        "writes went through between the faults: {report}"
    );
}

//! `keel chaos` against a real `keel up`: each action changes the process state it claims
//! to, only with the token.

mod support;

use std::time::Duration;

use support::{
    KeelProcess, KeelUp, Output, pid_alive, run_keel, tempdir, wait_for_health, wait_until,
};

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
    let mut load = support::spawn_verified_load(&target, "62s", &["--monitor", &tier.monitor_url]);
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
    let acknowledged = support::acknowledged_writes(&report);
    assert!(
        acknowledged > 100,
        "writes went through between the faults: {report}"
    );
}

/// The name of the other node of a two-node tier.
fn other_node(node: &str) -> &'static str {
    if node == "app1" { "app2" } else { "app1" }
}

/// `appK` → K.
fn node_number(node: &str) -> u16 {
    node.trim_start_matches("app")
        .parse()
        .unwrap_or_else(|_| panic!("{node} is not a node's name"))
}

/// The monitor's record of `node`.
fn node_view(tier: &KeelUp, node: &str) -> serde_json::Value {
    tier.view()["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == node).cloned())
        .unwrap_or_else(|| panic!("the monitor does not list {node}: {}", tier.view()))
}

/// `GET {url}/v1/kv/{key}`: the status and the body.
fn get_kv(url: &str, key: &str) -> (support::StatusCode, String) {
    support::get_text(&format!("{url}/v1/kv/{key}"))
}

/// What a process's fault file blocks.
fn blocked(tier: &KeelUp, name: &str) -> Vec<String> {
    let path = tier.data_dir.join("faults").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file: serde_json::Value = serde_json::from_str(&text).expect("a fault file is JSON");
    file["blocked"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|a| a.as_str().expect("an address").to_owned())
        .collect()
}

/// A partition like a real network's: the primary, cut off from the monitor and its
/// standby, loses its lease and refuses writes; the monitor promotes the standby, which
/// takes writes; healed, the old primary comes back as a standby with every acknowledged
/// write and none of the refused ones, and may be promoted again.
#[test]
fn a_primary_partitioned_from_everyone_is_replaced_and_rejoins_after_heal() {
    let dir = support::tempdir();
    let tier = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let old = tier.primary().expect("keel up names a primary");
    let new = other_node(&old);
    let (old_url, new_url) = (
        tier.node_url(node_number(&old)),
        tier.node_url(node_number(new)),
    );
    let resp = support::put_kv(&old_url, "before", "1");
    assert_eq!(resp.status(), support::StatusCode::OK);

    let out = chaos(&tier, &["partition", &old]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .contains(&format!("partitioned {old} from monitor, {new}"))
            && out.stdout.contains("fault filter"),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || tier
            .proc
            .log_text()
            .contains(&format!("keel chaos: partitioned {old} from"))),
        "keel up says what it did\n{}",
        tier.proc.log_report()
    );

    assert!(
        wait_until(Duration::from_secs(20), || tier.primary().as_deref()
            == Some(new)),
        "the monitor promotes {new}: {}\n{}",
        tier.view(),
        tier.proc.log_report()
    );
    // The old primary, alone, can neither write nor read: nothing it answers is current.
    let resp = support::put_kv(&old_url, "refused", "x");
    assert_eq!(resp.status(), support::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = resp.json().expect("a JSON refusal");
    assert_eq!(body["written"], false, "{body}");
    let (status, body) = get_kv(&old_url, "before");
    assert_eq!(status, support::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("no_lease"), "{body}");
    // The new primary takes writes.
    assert!(
        wait_until(Duration::from_secs(10), || support::put_kv(
            &new_url, "after", "2"
        )
        .status()
            == support::StatusCode::OK),
        "{} takes writes: {}",
        new,
        tier.view()
    );

    let out = chaos(&tier, &["heal"]);
    assert!(
        out.success() && out.stdout.contains("healed") && out.stdout.contains("fault filter"),
        "{out}"
    );
    assert!(blocked(&tier, &old).is_empty() && blocked(&tier, "monitor").is_empty());
    assert!(
        wait_until(Duration::from_secs(20), || tier.promotable(&old)),
        "{old} rejoins as a promotable standby: {}\n{}",
        tier.view(),
        tier.proc.log_report()
    );
    let record = node_view(&tier, &old);
    assert_eq!(record["role"], "standby", "{record}");
    assert_eq!(tier.primary().as_deref(), Some(new));
    // Standbys answer reads from their own log.
    assert_eq!(
        get_kv(&old_url, "before"),
        (support::StatusCode::OK, "1".into())
    );
    assert_eq!(
        get_kv(&old_url, "after"),
        (support::StatusCode::OK, "2".into())
    );
    assert_eq!(
        get_kv(&old_url, "refused").0,
        support::StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_kv(&new_url, "refused").0,
        support::StatusCode::NOT_FOUND
    );
}

/// A standby cut off from its primary only: the primary stops waiting for it once the
/// monitor has recorded it out of the sync set, writes go on, and nothing fails over (the
/// monitor still hears from both); healed, it catches up and is promotable again.
#[test]
fn a_standby_partitioned_from_its_primary_leaves_the_sync_set_until_healed() {
    let dir = support::tempdir();
    let tier = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let primary = tier.primary().expect("keel up names a primary");
    let standby = other_node(&primary);
    let (primary_url, standby_url) = (
        tier.node_url(node_number(&primary)),
        tier.node_url(node_number(standby)),
    );
    assert!(tier.promotable(standby), "{}", tier.view());

    let out = chaos(&tier, &["partition", standby, "--from", &primary]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains(&format!(
            "partitioned {standby} from {primary} (fault filter"
        )),
        "{out}"
    );
    assert!(
        blocked(&tier, "monitor").is_empty(),
        "the monitor is not cut off"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let record = node_view(&tier, standby);
            record["sync"] == false && record["promotable"] == false
        }),
        "{standby} leaves the sync set: {}\n{}",
        tier.view(),
        tier.proc.log_report()
    );
    assert_eq!(
        node_view(&tier, standby)["healthy"],
        true,
        "it still heartbeats"
    );
    let resp = support::put_kv(&primary_url, "alone", "1");
    assert_eq!(
        resp.status(),
        support::StatusCode::OK,
        "the primary writes without it"
    );
    assert_eq!(tier.primary().as_deref(), Some(primary.as_str()));
    assert_eq!(
        get_kv(&standby_url, "alone").0,
        support::StatusCode::NOT_FOUND,
        "nothing reaches the standby"
    );

    let out = chaos(&tier, &["heal"]);
    assert!(out.success() && out.stdout.contains("healed"), "{out}");
    assert!(
        wait_until(Duration::from_secs(10), || tier.promotable(standby)),
        "{standby} is back in sync: {}\n{}",
        tier.view(),
        tier.proc.log_report()
    );
    assert_eq!(node_view(&tier, standby)["sync"], true);
    assert_eq!(
        get_kv(&standby_url, "alone"),
        (support::StatusCode::OK, "1".into())
    );
}

#[test]
fn partitions_need_the_token_and_name_the_data_tier() {
    let dir = support::tempdir();
    let tier = KeelUp::start(&dir.path().join("keel-data"), 1, &[]);
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token-0123456789abcdef").expect("write");
    let wrong_arg = wrong.display().to_string();
    let out = chaos(&tier, &["--token-file", &wrong_arg, "partition", "app1"]);
    assert!(!out.success() && out.stderr.contains("401"), "{out}");
    assert!(blocked(&tier, "app1").is_empty(), "nothing was done");
    let out = chaos(&tier, &["--token-file", &wrong_arg, "heal"]);
    assert!(!out.success() && out.stderr.contains("401"), "{out}");

    let out = chaos(&tier, &["partition", "app9"]);
    assert!(
        !out.success() && out.stderr.contains("monitor, app1"),
        "names the data tier: {out}"
    );
    let out = chaos(&tier, &["partition", "app1", "--from", "app7"]);
    assert!(!out.success() && out.stderr.contains("app7"), "{out}");
    let out = chaos(&tier, &["partition", "proxy"]);
    assert!(
        !out.success() && out.stderr.contains("not in the data tier"),
        "{out}"
    );
    let out = chaos(&tier, &["partition", "app1", "--from", "app1"]);
    assert!(!out.success() && out.stderr.contains("itself"), "{out}");
    assert!(blocked(&tier, "app1").is_empty() && blocked(&tier, "monitor").is_empty());

    // A body that is not a partition, with the token: 400, saying what is expected.
    let up: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tier.data_dir.join("up.json")).expect("up.json"),
    )
    .expect("up.json is JSON");
    let token = std::fs::read_to_string(&tier.token_file).expect("token");
    let resp = support::http_client()
        .post(format!(
            "{}/v1/partition",
            up["control"].as_str().expect("url")
        ))
        .bearer_auth(token.trim())
        .body(r#"{"nodes": "app1"}"#)
        .send()
        .expect("keel up answers");
    assert_eq!(resp.status(), support::StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().expect("a JSON refusal");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"node\"")),
        "{body}"
    );

    // Partitions in a chaos run: each one healed before the next fault.
    let out = chaos(
        &tier,
        &[
            "run",
            "--duration",
            "3s",
            "--seed",
            "5",
            "--faults",
            "partition",
            "--min-gap",
            "100ms",
            "--max-gap",
            "200ms",
            "--min-hold",
            "300ms",
            "--max-hold",
            "400ms",
        ],
    );
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .contains("partitioned app1 from monitor (fault filter")
            && out.stdout.contains("healed app1–monitor")
            && out.stdout.contains("chaos over"),
        "{out}"
    );
    assert!(blocked(&tier, "app1").is_empty() && blocked(&tier, "monitor").is_empty());
    let out = chaos(
        &tier,
        &["run", "--faults", "partition", "--targets", "service1"],
    );
    assert!(
        !out.success() && out.stderr.contains("cannot be partitioned"),
        "{out}"
    );
}

#[test]
fn a_process_started_again_by_hand_is_listed_as_running() {
    let dir = tempdir();
    let tier = KeelUp::start(&dir.path().join("keel-data"), 2, &[]);
    let out = chaos(&tier, &["kill", "app2"]);
    assert!(out.success(), "{out}");
    assert_eq!(listed(&tier, "app2").1, "exited");
    let data = tier.data_dir.display().to_string();
    let listen = format!("127.0.0.1:{}", tier.base_port + 1);
    let (app2_dir, token, secret) = (
        format!("{data}/app2"),
        tier.token_file.display().to_string(),
        format!("{data}/cluster.secret"),
    );
    let mut by_hand = KeelProcess::spawn(
        "app2-by-hand",
        &[
            "node",
            "--id",
            "app2",
            "--listen",
            &listen,
            "--data-dir",
            &app2_dir,
            "--monitor",
            &tier.monitor_url,
            "--token-file",
            &token,
            "--cluster-secret-file",
            &secret,
        ],
    );
    wait_for_health(&mut by_hand, &tier.node_url(2));
    let out = chaos(&tier, &["list"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("app2")
                && l.contains("running (started by hand, not by keel up)")),
        "{out}"
    );
}

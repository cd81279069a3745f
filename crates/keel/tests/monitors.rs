//! Three `keel monitor` processes replicating the cluster state with Raft, and monitored
//! `keel node` processes that follow whichever monitor leads: a dead leader is replaced
//! and writes never stop, a failover completes through the new leader, a restart of
//! every monitor keeps the epoch and the primary, and with two of three monitors down
//! nothing fails over while the data tier keeps writing.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::writers::{Writers, assert_nothing_lost};
use support::{
    KeelProcess, TestMonitor, TestNode, free_ports, http_client, keel_bin, tempdir, url_for,
    wait_for_health, wait_until,
};

/// `keel client cluster --monitor URLS`: its status and what it printed.
fn client_cluster(monitors: &str) -> (bool, String) {
    let out = std::process::Command::new(keel_bin())
        .args(["client", "cluster", "--monitor", monitors])
        .output()
        .expect("run keel client");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One monitor of the group.
struct Monitor {
    id: String,
    url: String,
    proc: KeelProcess,
    args: Vec<String>,
    up: bool,
}

/// Three monitors and two monitored nodes, closed to outsiders.
struct Group {
    root: PathBuf,
    monitors: Vec<Monitor>,
    nodes: BTreeMap<String, TestNode>,
}

/// How the monitors get their options.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Options {
    Flags,
    /// `keel monitor --config mN.toml`, with paths relative to the file.
    Files,
}

impl Group {
    fn start(root: &Path) -> Group {
        Self::start_with(root, Options::Flags)
    }

    fn start_with(root: &Path, options: Options) -> Group {
        let secret = root.join("cluster.secret");
        let token = root.join("admin.token");
        fs::create_dir_all(root).expect("root");
        fs::write(&secret, TestMonitor::SECRET).expect("secret");
        fs::write(&token, TestMonitor::TOKEN).expect("token");
        let ports = free_ports(3);
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{}={}", i + 1, url_for(*p)))
            .collect();
        let peers = peers.join(",");
        let mut monitors = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let id = format!("m{}", i + 1);
            let file = root.join(format!("{id}.toml"));
            let table: Vec<String> = ports
                .iter()
                .enumerate()
                .map(|(j, p)| format!("m{} = \"{}\"", j + 1, url_for(*p)))
                .collect();
            let text = format!(
                "id = \"{id}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{id}\"\n\
                 token_file = \"admin.token\"\ncluster_secret_file = \"cluster.secret\"\n\
                 [peers]\n{}\n",
                table.join("\n")
            );
            fs::write(&file, text).expect("monitor file");
            let from_file = ["monitor", "--config", &file.display().to_string()]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let flags: Vec<String> = [
                "monitor",
                "--id",
                &id,
                "--peers",
                &peers,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                &root.join(&id).display().to_string(),
                "--token-file",
                &token.display().to_string(),
                "--cluster-secret-file",
                &secret.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let args = match options {
                Options::Flags => flags,
                Options::Files => from_file,
            };
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let proc = KeelProcess::spawn(&id, &refs);
            monitors.push(Monitor {
                id,
                url: url_for(*port),
                proc,
                args,
                up: true,
            });
        }
        for m in &mut monitors {
            wait_for_health(&mut m.proc, &m.url);
        }
        let mut group = Group {
            root: root.to_owned(),
            monitors,
            nodes: BTreeMap::new(),
        };
        assert!(
            wait_until(Duration::from_secs(10), || group.leader().is_some()),
            "no monitor leads: {:?}",
            group.views()
        );
        group.add_node("app1");
        assert!(
            wait_until(Duration::from_secs(10), || group.primary().is_some()),
            "no primary: {:?}",
            group.views()
        );
        group.add_node("app2");
        assert!(
            wait_until(Duration::from_secs(15), || group.promotable("app2")),
            "app2 never promotable: {:?}",
            group.views()
        );
        group
    }

    fn member_flags(&self) -> Vec<String> {
        vec![
            "--token-file".into(),
            self.root.join("admin.token").display().to_string(),
            "--cluster-secret-file".into(),
            self.root.join("cluster.secret").display().to_string(),
        ]
    }

    fn monitor_urls(&self) -> String {
        let urls: Vec<&str> = self.monitors.iter().map(|m| m.url.as_str()).collect();
        urls.join(",")
    }

    fn add_node(&mut self, id: &str) {
        let flags = self.member_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let urls = self.monitor_urls();
        let node = TestNode::monitored(id, self.root.join(id), &urls, &flags);
        self.nodes.insert(id.to_owned(), node);
    }

    /// Each live monitor's cluster view.
    fn views(&self) -> Vec<serde_json::Value> {
        self.monitors
            .iter()
            .filter(|m| m.up)
            .filter_map(|m| view_of(&m.url))
            .collect()
    }

    /// The monitor that says it leads (its view names itself), if one does.
    fn leader(&self) -> Option<usize> {
        self.monitors.iter().position(|m| {
            m.up && view_of(&m.url).is_some_and(|v| {
                v["monitors"]["leader"] == m.id.as_str()
                    && v["monitors"]["answered_by"] == m.id.as_str()
            })
        })
    }

    /// The primary per the leader's view, once no failover runs.
    fn primary(&self) -> Option<String> {
        let leader = self.leader()?;
        let view = view_of(&self.monitors[leader].url)?;
        if view["failover_in_progress"] == true {
            return None;
        }
        view["primary"]["node"].as_str().map(str::to_owned)
    }

    /// The primary per the leader's view, waiting (up to 15 s) while a leader or a
    /// failover is being settled: between two looks, the leadership may move.
    fn wait_primary(&self) -> String {
        let mut found = None;
        wait_until(Duration::from_secs(15), || {
            found = self.primary();
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no primary: {:?}", self.views()))
    }

    fn promotable(&self, id: &str) -> bool {
        self.leader()
            .and_then(|l| view_of(&self.monitors[l].url))
            .and_then(|v| {
                v["nodes"]
                    .as_array()
                    .and_then(|ns| ns.iter().find(|n| n["node"] == id).cloned())
            })
            .is_some_and(|n| n["promotable"] == true)
    }

    fn kill_monitor(&mut self, i: usize) {
        self.monitors[i].proc.kill9();
        self.monitors[i].up = false;
    }

    fn restart_monitor(&mut self, i: usize) {
        let m = &mut self.monitors[i];
        m.proc.restart(&m.args, &m.url);
        m.up = true;
    }
}

fn view_of(url: &str) -> Option<serde_json::Value> {
    http_client()
        .get(format!("{url}/v1/cluster"))
        .timeout(Duration::from_millis(500))
        .send()
        .ok()
        .filter(|r| r.status() == StatusCode::OK)
        .and_then(|r| r.json().ok())
}

#[test]
fn a_dead_monitor_leader_is_replaced_writes_never_stop_and_a_primary_kill_fails_over_through_the_new_leader()
 {
    let root = tempdir();
    let mut group = Group::start(root.path());
    let writers = Writers::start(&group.monitor_urls(), 4);
    writers.wait_more(50);

    let old = group.leader().expect("a leader");
    let killed_at = Instant::now();
    group.kill_monitor(old);
    assert!(
        wait_until(Duration::from_secs(10), || group
            .leader()
            .is_some_and(|l| l != old)),
        "no new leader after {} died: {:?}",
        group.monitors[old].id,
        group.views()
    );
    let elected_at = Instant::now();
    let new = group.leader().expect("a new leader");
    eprintln!(
        "{} led; {} leads {:?} after it was killed",
        group.monitors[old].id,
        group.monitors[new].id,
        elected_at - killed_at
    );
    // The primary's standby kept renewing its lease while no monitor led.
    assert!(
        writers.acked_between(killed_at, elected_at) > 0,
        "no write was acknowledged while the monitors elected a new leader"
    );
    writers.wait_more(50);

    // The primary dies: the new leader fails it over.
    let primary = group.wait_primary();
    group.nodes.get_mut(&primary).expect("node").kill9();
    assert!(
        wait_until(Duration::from_secs(15), || group
            .primary()
            .is_some_and(|p| p != primary)),
        "no failover through the new leader: {:?}",
        group.views()
    );
    writers.wait_more(50);
    let acks = writers.finish();
    let now_primary = group.wait_primary();
    let url = group.nodes[&now_primary].url.clone();
    assert_nothing_lost(&acks, &url, &now_primary);

    // `keel client` given every monitor finds the leader among the living.
    let (ok, out) = client_cluster(&group.monitor_urls());
    assert!(ok, "{out}");
    let leader_id = &group.monitors[new].id;
    assert!(out.contains(&format!("leader {leader_id}")), "{out}");
    assert!(out.contains(&format!("primary {now_primary}")), "{out}");
}

#[test]
fn restarting_every_monitor_keeps_the_epoch_and_the_primary() {
    let root = tempdir();
    // Started, and started again, from one TOML file each.
    let mut group = Group::start_with(root.path(), Options::Files);
    let leader = group.leader().expect("a leader");
    let before = view_of(&group.monitors[leader].url).expect("view");
    for i in 0..3 {
        group.kill_monitor(i);
    }
    for i in 0..3 {
        group.restart_monitor(i);
    }
    assert!(
        wait_until(Duration::from_secs(10), || group.leader().is_some()),
        "no leader after the restart: {:?}",
        group.views()
    );
    let leader = group.leader().expect("a leader");
    let after = view_of(&group.monitors[leader].url).expect("view");
    assert_eq!(after["epoch"], before["epoch"], "{after}");
    assert_eq!(after["primary"], before["primary"], "{after}");
    let primary = after["primary"]["url"].as_str().expect("primary url");
    let resp = support::put_kv(primary, "after-restart", "1");
    assert_eq!(resp.status(), StatusCode::OK);

    // The leader's /metrics carries its Raft figures: it leads, in a term no older than
    // before (a leader that restarts with its vote may lead again in its own term).
    let (status, text) = support::get_text(&format!("{}/metrics", group.monitors[leader].url));
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("keel_monitor_raft_leader 1"), "{text}");
    let term: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("keel_monitor_raft_term "))
        .and_then(|v| v.parse().ok())
        .expect("a term");
    let before_term = before["monitors"]["term"].as_u64().expect("term");
    assert!(
        term >= before_term,
        "term {term} after the restart, {before_term} before"
    );
    assert!(text.contains("keel_monitor_raft_applied_index"), "{text}");
}

#[test]
fn with_two_of_three_monitors_down_nothing_fails_over_but_writes_go_on_until_a_majority_is_back() {
    let root = tempdir();
    let mut group = Group::start(root.path());
    let primary = group.wait_primary();
    let primary_url = group.nodes[&primary].url.clone();
    let leader = group.leader().expect("a leader");
    let other = (0..3).find(|i| *i != leader).expect("another monitor");
    let survivor = (0..3)
        .find(|i| *i != leader && *i != other)
        .expect("a third");
    group.kill_monitor(leader);
    group.kill_monitor(other);

    // The data tier writes on: its sync standby renews the primary's lease.
    for i in 0..20 {
        let resp = support::put_kv(&primary_url, &format!("k{i}"), "v");
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "write {i} with the monitors down"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The survivor cannot decide, and says why (once its election timeout has shown it
    // that the leader it knew is gone).
    let refusal = |url: &str| -> Option<serde_json::Value> {
        let resp = http_client()
            .post(format!("{url}/v1/failover"))
            .bearer_auth(TestMonitor::TOKEN)
            .send()
            .ok()?;
        (resp.status() == StatusCode::SERVICE_UNAVAILABLE)
            .then(|| resp.json().ok())
            .flatten()
    };
    let survivor_url = group.monitors[survivor].url.clone();
    assert!(
        wait_until(Duration::from_secs(10), || refusal(&survivor_url).is_some()),
        "the survivor still claims a leader: {:?}",
        group.views()
    );
    let body = refusal(&survivor_url).expect("a refusal");
    assert_eq!(body["error"], "not_leader", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("majority of monitors")),
        "{body}"
    );

    let (_, out) = client_cluster(&group.monitor_urls());
    assert!(out.contains("no leader"), "{out}");

    // The primary dies: nothing fails over without a majority of monitors.
    group.nodes.get_mut(&primary).expect("node").kill9();
    thread::sleep(Duration::from_secs(3));
    let view = view_of(&group.monitors[survivor].url).expect("view");
    assert_eq!(view["primary"]["node"], primary.as_str(), "{view}");
    assert_eq!(view["failover_in_progress"], false, "{view}");

    // A majority again: the failover happens.
    group.restart_monitor(other);
    assert!(
        wait_until(Duration::from_secs(20), || group
            .primary()
            .is_some_and(|p| p != primary)),
        "no failover once a majority was back: {:?}",
        group.views()
    );
    let now = group.wait_primary();
    let url = group.nodes[&now].url.clone();
    for i in 0..20 {
        let resp = http_client()
            .get(format!("{url}/v1/kv/k{i}"))
            .send()
            .expect("GET");
        assert_eq!(resp.status(), StatusCode::OK, "k{i} lost in the failover");
    }
}

#[test]
fn the_primary_and_the_monitor_leader_killed_together_leave_one_new_primary_and_lose_nothing() {
    let root = tempdir();
    let mut group = Group::start(root.path());
    let writers = Writers::start(&group.monitor_urls(), 4);
    writers.wait_more(50);
    let primary = group.wait_primary();
    let leader = group.leader().expect("a leader");
    group.nodes.get_mut(&primary).expect("node").kill9();
    group.kill_monitor(leader);
    assert!(
        wait_until(Duration::from_secs(20), || group
            .primary()
            .is_some_and(|p| p != primary)),
        "no failover after the primary and the leader died together: {:?}",
        group.views()
    );
    writers.wait_more(50);
    let acks = writers.finish();
    let now = group.wait_primary();
    // One primary: every live monitor names the same one.
    for view in group.views() {
        assert_eq!(view["primary"]["node"], now.as_str(), "{view}");
    }
    assert_nothing_lost(&acks, &group.nodes[&now].url.clone(), &now);
}

#[test]
fn an_outsider_cannot_speak_raft_to_the_monitors() {
    let root = tempdir();
    let group = Group::start(root.path());
    let leader = group.leader().expect("a leader");
    let term = view_of(&group.monitors[leader].url).expect("view")["monitors"]["term"].clone();
    // A vote request for a far later term, unsigned: it would depose the leader if taken.
    let vote = serde_json::json!({
        "vote": {"leader_id": {"term": 1000, "node_id": 9}, "committed": false},
        "last_log_id": null
    });
    for m in &group.monitors {
        let resp = http_client()
            .post(format!("{}/v1/raft/vote", m.url))
            .json(&vote)
            .send()
            .expect("POST vote");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{}", m.id);
    }
    let after = view_of(&group.monitors[leader].url).expect("view");
    assert_eq!(after["monitors"]["term"], term, "{after}");
    assert_eq!(group.leader(), Some(leader));
}

#[test]
fn a_monitor_joins_and_another_leaves_a_running_group() {
    let root = tempdir();
    let mut group = Group::start(root.path());
    // m4 starts naming the group and itself; it waits until the group takes it in.
    let port = free_ports(1)[0];
    let url = url_for(port);
    let peers = format!(
        "{},m4={url}",
        group
            .monitors
            .iter()
            .map(|m| format!("{}={}", m.id, m.url))
            .collect::<Vec<_>>()
            .join(",")
    );
    let args: Vec<String> = [
        "monitor",
        "--id",
        "m4",
        "--peers",
        &peers,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &root.path().join("m4").display().to_string(),
        "--token-file",
        &root.path().join("admin.token").display().to_string(),
        "--cluster-secret-file",
        &root.path().join("cluster.secret").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = KeelProcess::spawn("m4", &refs);
    wait_for_health(&mut proc, &url);
    group.monitors.push(Monitor {
        id: "m4".into(),
        url: url.clone(),
        proc,
        args,
        up: true,
    });

    let token = group.root.join("admin.token").display().to_string();
    let urls = group.monitor_urls();
    let client = |args: &[&str]| {
        let mut all = vec!["client", "--monitor", &urls, "--token-file", &token];
        all.extend_from_slice(args);
        support::run_keel(&all)
    };
    let added = format!("m4={url}");
    let out = client(&["monitors", "add", &added]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("m4 joined the group"), "{out}");
    assert!(
        out.stdout.contains("m4  ") && out.stdout.contains("voter"),
        "{out}"
    );
    // m4 holds the cluster state now.
    assert!(
        wait_until(Duration::from_secs(10), || view_of(&url)
            .is_some_and(|v| v["primary"]["node"] == "app1")),
        "{:?}",
        view_of(&url)
    );

    let out = client(&["monitors", "remove", "m1"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("m1 left the group"), "{out}");
    assert!(!out.stdout.contains("m1  http"), "{out}");
    group.kill_monitor(0);
    // Three voters are left (m2, m3, m4): they lead, and a failover still happens.
    assert!(
        wait_until(Duration::from_secs(10), || group.primary().is_some()),
        "no leader among m2..m4: {:?}",
        group.views()
    );
    let primary = group.wait_primary();
    group.nodes.get_mut(&primary).expect("node").kill9();
    assert!(
        wait_until(Duration::from_secs(15), || group
            .primary()
            .is_some_and(|p| p != primary)),
        "no failover with m1 gone: {:?}",
        group.views()
    );
    // Removing a monitor that is not a member says so.
    let out = client(&["monitors", "remove", "m9"]);
    assert!(!out.success());
    assert!(out.stderr.contains("not a voting member"), "{out}");
}

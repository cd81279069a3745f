//! Automatic failover with a real `keel monitor` and real `keel node --monitor` processes:
//! kills, freezes, a dead monitor, a stale standby, a switchover — and after each, every
//! acknowledged write is still there.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::writers::{Ack, Writers, assert_nothing_lost};
use support::{TestMonitor, TestNode, get_json, http_client, tempdir, wait_until};

/// A monitor and monitored nodes, each a real process, in one directory.
struct Cluster {
    root: PathBuf,
    monitor: TestMonitor,
    monitor_url: String,
    nodes: BTreeMap<String, TestNode>,
    /// Flags every node gets besides the monitor's (`--store log`).
    node_flags: Vec<String>,
}

impl Cluster {
    /// A monitor and `n` nodes (app1 registers first and becomes primary), closed to
    /// outsiders as `keel up` starts them: every call between them is signed.
    fn start(root: &Path, n: usize) -> Cluster {
        Self::start_with(root, n, &[])
    }

    /// As [`Cluster::start`], each node started with `node_flags` too.
    fn start_with(root: &Path, n: usize, node_flags: &[&str]) -> Cluster {
        let monitor = TestMonitor::start_closed(&root.join("monitor"), &[]);
        let monitor_url = monitor.url.clone();
        let mut cluster = Cluster {
            root: root.to_owned(),
            monitor,
            monitor_url,
            nodes: BTreeMap::new(),
            node_flags: node_flags.iter().map(|f| f.to_string()).collect(),
        };
        for i in 1..=n {
            let id = format!("app{i}");
            cluster.add_node(&id);
            if i == 1 {
                assert!(
                    wait_until(Duration::from_secs(10), || cluster.primary().is_some()),
                    "no primary elected: {}",
                    cluster.view()
                );
            }
        }
        let all = cluster.nodes.keys().cloned().collect::<Vec<_>>();
        for id in all.iter().skip(1) {
            cluster.wait_promotable(id);
        }
        cluster
    }

    fn add_node(&mut self, id: &str) {
        let mut flags = self.monitor.member_flags();
        flags.extend(self.node_flags.iter().cloned());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let node = TestNode::monitored(id, self.root.join(id), &self.monitor_url, &flags);
        self.nodes.insert(id.to_owned(), node);
    }

    fn view(&self) -> serde_json::Value {
        self.monitor.cluster()
    }

    /// The primary's id, per the monitor, once no failover is running.
    fn primary(&self) -> Option<String> {
        let view = self.view();
        if view["failover_in_progress"] == true {
            return None;
        }
        view["primary"]["node"].as_str().map(str::to_owned)
    }

    fn node_view(&self, id: &str) -> serde_json::Value {
        self.view()["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node"] == id).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    fn wait_promotable(&self, id: &str) {
        let ok = wait_until(Duration::from_secs(20), || {
            self.node_view(id)["promotable"] == true
        });
        assert!(ok, "{id} never became promotable: {}", self.view());
    }

    /// Waits for a primary other than `old`, with no failover running.
    fn wait_new_primary(&self, old: &str) -> String {
        let mut found = None;
        let ok = wait_until(Duration::from_secs(20), || {
            found = self.primary().filter(|p| p != old);
            found.is_some()
        });
        assert!(ok, "no new primary after {old}: {}", self.view());
        found.unwrap_or_default()
    }

    fn node(&mut self, id: &str) -> &mut TestNode {
        self.nodes
            .get_mut(id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn url(&self, id: &str) -> String {
        self.nodes
            .get(id)
            .map(|n| n.url.clone())
            .unwrap_or_default()
    }
}

#[test]
fn kill9_the_primary_ten_times_under_8_writers_every_acknowledged_write_survives() {
    let root = tempdir();
    let cluster = Cluster::start(root.path(), 2);
    kill_the_primary_under_writers(cluster, 10);
}

/// The same on `--store log`: each node's state in memory and one append-only file,
/// replayed when the killed primary starts again.
#[test]
fn on_the_log_store_kill9_the_primary_five_times_under_8_writers_every_acknowledged_write_survives()
{
    let root = tempdir();
    let cluster = Cluster::start_with(root.path(), 2, &["--store", "log"]);
    for id in ["app1", "app2"] {
        let dir = root.path().join(id);
        assert!(dir.join("keel.log").is_file(), "{id} keeps keel.log");
        assert!(!dir.join("keel.redb").exists(), "{id} made a redb file too");
    }
    kill_the_primary_under_writers(cluster, 5);
}

/// 8 writers through the cluster while the primary is killed with SIGKILL `cycles` times,
/// restarted each time from its data directory; afterwards every node holds every
/// acknowledged write.
fn kill_the_primary_under_writers(mut cluster: Cluster, cycles: u64) {
    let writers = Writers::start(&cluster.monitor_url, 8);
    writers.wait_more(100);
    for cycle in 0..cycles {
        let old = cluster.primary().expect("a primary");
        cluster.node(&old).kill9();
        let new = cluster.wait_new_primary(&old);
        writers.wait_more(50);
        cluster.node(&old).restart();
        // The old primary rejoins as a standby, catches up and is promotable again.
        cluster.wait_promotable(&old);
        assert_eq!(cluster.node_view(&old)["role"], "standby", "cycle {cycle}");
        assert_eq!(
            cluster.primary().as_deref(),
            Some(new.as_str()),
            "cycle {cycle}"
        );
        writers.wait_more(50);
    }
    let acks = writers.finish();
    for (id, node) in &cluster.nodes {
        assert_nothing_lost(&acks, &node.url, id);
    }
    assert_eq!(
        cluster.view()["epoch"].as_u64().map(|e| e > cycles),
        Some(true),
        "{}",
        cluster.view()
    );
}

#[test]
fn a_frozen_primary_is_replaced_and_acknowledges_nothing_after_its_lease() {
    let root = tempdir();
    let cluster = Cluster::start(root.path(), 2);
    let writers = Writers::start(&cluster.monitor_url, 8);
    writers.wait_more(100);
    let old = cluster.primary().expect("a primary");
    cluster.nodes[&old].proc.stop();
    let frozen_at = Instant::now();
    let new = cluster.wait_new_primary(&old);
    writers.wait_more(50);
    // Hold the old primary frozen for 3 s in all, then let it run again.
    let left = Duration::from_secs(3).saturating_sub(frozen_at.elapsed());
    thread::sleep(left);
    cluster.nodes[&old].proc.cont();
    let resumed_at = Instant::now();
    // It steps down and rejoins as a standby of the new primary.
    cluster.wait_promotable(&old);
    assert_eq!(cluster.node_view(&old)["role"], "standby");
    writers.wait_more(50);
    let acks = writers.finish();
    // Nothing the old primary answered after it woke up was acknowledged: its lease had
    // ended long before.
    let late: Vec<&Ack> = acks
        .iter()
        .filter(|a| a.node == old && a.at > resumed_at)
        .collect();
    assert!(
        late.is_empty(),
        "the deposed primary acknowledged {} writes after waking: {:?}",
        late.len(),
        &late[..late.len().min(3)]
    );
    // No key holds less than what was acknowledged for it, on either node: two primaries
    // never both took writes for the same key in overlapping time.
    assert_nothing_lost(&acks, &cluster.url(&new), &new);
    assert_nothing_lost(&acks, &cluster.url(&old), &old);
}

#[test]
fn with_the_monitor_dead_the_data_tier_keeps_writing_and_a_restarted_monitor_keeps_its_state() {
    let root = tempdir();
    let mut cluster = Cluster::start(root.path(), 2);
    let before = cluster.view();
    let primary = cluster.primary().expect("a primary");
    cluster.monitor.proc.kill9();
    // The primary's lease is renewed by its standby alone now.
    let url = cluster.url(&primary);
    for i in 0..50 {
        let r = support::put_kv(&url, &format!("no-monitor-{i}"), "x");
        assert_eq!(r.status(), StatusCode::OK, "write {i} without a monitor");
    }
    // The primary says, in its metrics, that its heartbeats are failing.
    let failed_line =
        format!("keel_node_heartbeats_total{{node=\"{primary}\",outcome=\"failed\"}} ");
    let failing = wait_until(Duration::from_secs(10), || {
        let (_, metrics) = support::get_text(&format!("{url}/metrics"));
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&failed_line))
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    });
    assert!(failing, "no failed heartbeats counted on {primary}");
    cluster.monitor.restart();
    let after = cluster.view();
    assert_eq!(after["epoch"], before["epoch"]);
    assert_eq!(after["primary"]["node"], before["primary"]["node"]);
    // The nodes heartbeat again, and the cluster carries on as before.
    assert!(wait_until(Duration::from_secs(10), || cluster
        .node_view("app2")["healthy"]
        == true));
    assert_eq!(
        support::put_kv(&url, "monitor-back", "x").status(),
        StatusCode::OK
    );
}

#[test]
fn a_stale_standby_is_never_promoted_and_the_cluster_view_says_why() {
    let root = tempdir();
    let mut cluster = Cluster::start(root.path(), 2);
    let primary = cluster.primary().expect("a primary");
    let standby = if primary == "app1" { "app2" } else { "app1" }.to_owned();
    cluster.node(&standby).kill9();
    // Writes go on once the monitor has dropped the standby from the sync set.
    let url = cluster.url(&primary);
    let resumed = wait_until(Duration::from_secs(10), || {
        support::put_kv(&url, "after-standby-died", "x").status() == StatusCode::OK
    });
    assert!(
        resumed,
        "writes never resumed without the standby: {}",
        cluster.view()
    );
    for i in 0..20 {
        assert_eq!(
            support::put_kv(&url, &format!("alone-{i}"), "x").status(),
            StatusCode::OK
        );
    }
    assert_eq!(cluster.node_view(&standby)["promotable"], false);
    // Now the primary dies, and the standby, which missed those writes, comes back.
    cluster.node(&primary).kill9();
    cluster.node(&standby).restart();
    let why = wait_until(Duration::from_secs(10), || {
        cluster.node_view(&standby)["why_not_promotable"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
            && cluster.node_view(&standby)["healthy"] == true
    });
    assert!(why, "{}", cluster.view());
    // The monitor has decided, and its decision is: nothing can be promoted.
    let events = support::read_events(&cluster.monitor_url, "no_promotable_standby");
    assert!(events.contains("no_promotable_standby"), "{events}");
    let view = cluster.view();
    assert_ne!(
        view["primary"]["node"],
        standby.as_str(),
        "the stale standby was promoted: {view}"
    );
    assert_eq!(cluster.node_view(&standby)["role"], "standby", "{view}");
    let (_, h) = get_json(&format!("{}/health", cluster.url(&standby)));
    assert_eq!(h["role"], "standby");
}

#[test]
fn a_switchover_moves_the_primary_without_losing_an_acknowledged_write() {
    let root = tempdir();
    let cluster = Cluster::start(root.path(), 2);
    let writers = Writers::start(&cluster.monitor_url, 8);
    writers.wait_more(100);
    let old = cluster.primary().expect("a primary");
    let target = if old == "app1" { "app2" } else { "app1" };
    let unauthorized = http_client()
        .post(format!("{}/v1/failover", cluster.monitor_url))
        .json(&serde_json::json!({"to": target}))
        .send()
        .expect("POST");
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    let resp = http_client()
        .post(format!("{}/v1/failover", cluster.monitor_url))
        .bearer_auth(TestMonitor::TOKEN)
        .json(&serde_json::json!({"to": target}))
        .send()
        .expect("POST");
    assert!(resp.status().is_success(), "{:?}", resp.text());
    assert_eq!(cluster.wait_new_primary(&old), target);
    writers.wait_more(100);
    cluster.wait_promotable(&old);
    let acks = writers.finish();
    assert_nothing_lost(&acks, &cluster.url(target), target);
    assert_nothing_lost(&acks, &cluster.url(&old), &old);
}

#[test]
fn standbys_dropped_from_the_sync_set_do_not_hold_the_primarys_lease_hostage() {
    // Three nodes; both standbys die. Once the monitor has recorded them out of the sync
    // set, the primary writes on its own lease from the monitor: dead standbys that can
    // never be promoted must not count against it.
    let root = tempdir();
    let mut cluster = Cluster::start(root.path(), 3);
    let primary = cluster.primary().expect("a primary");
    let standbys: Vec<String> = cluster
        .nodes
        .keys()
        .filter(|id| **id != primary)
        .cloned()
        .collect();
    for s in &standbys {
        cluster.node(s).kill9();
    }
    let url = cluster.url(&primary);
    let resumed = wait_until(Duration::from_secs(10), || {
        support::put_kv(&url, "alone-with-the-monitor", "x").status() == StatusCode::OK
    });
    assert!(
        resumed,
        "no write after both standbys died: {}",
        cluster.view()
    );
    for s in &standbys {
        assert_eq!(cluster.node_view(s)["sync"], false, "{}", cluster.view());
    }
}

//! The Prometheus text of `GET /metrics`.

use std::fmt::Write;

use crate::machine::Stats;
use crate::wire::ClusterView;

/// What a monitor in a group shows of its Raft.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftFigures {
    /// The current term.
    pub term: u64,
    /// Whether this monitor leads.
    pub leader: bool,
    /// Leader changes this monitor saw since it started.
    pub leader_changes: u64,
    /// Elections this monitor stood in since it started.
    pub elections: u64,
    /// The index of the last entry in its log.
    pub last_log: u64,
    /// The index of the last entry applied to the cluster state.
    pub last_applied: u64,
}

/// Renders the Raft figures of a monitor in a group.
pub fn render_raft(r: &RaftFigures) -> String {
    let mut out = String::with_capacity(1024);
    let rows: [(&str, &str, &str, u64); 6] = [
        ("keel_monitor_raft_term", "gauge", "The Raft term.", r.term),
        (
            "keel_monitor_raft_leader",
            "gauge",
            "1 while this monitor leads its group.",
            u64::from(r.leader),
        ),
        (
            "keel_monitor_raft_leader_changes_total",
            "counter",
            "Leader changes this monitor saw since it started.",
            r.leader_changes,
        ),
        (
            "keel_monitor_raft_elections_total",
            "counter",
            "Elections this monitor stood in since it started.",
            r.elections,
        ),
        (
            "keel_monitor_raft_last_log_index",
            "gauge",
            "The index of the last entry in this monitor's Raft log.",
            r.last_log,
        ),
        (
            "keel_monitor_raft_applied_index",
            "gauge",
            "The index of the last entry applied to the cluster state here.",
            r.last_applied,
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// Renders the monitor's metrics. `malformed` counts heartbeats refused before they
/// reached the state machine (unparsable bodies); `last_event` is the newest event id.
pub fn render(view: &ClusterView, stats: &Stats, malformed: u64, last_event: u64) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        "keel_monitor_epoch",
        "gauge",
        "The current epoch.",
        &one(view.epoch.0),
    );
    metric(
        "keel_monitor_state_version",
        "gauge",
        "The cluster-state version; every change bumps it.",
        &one(view.version),
    );
    metric(
        "keel_monitor_failover_in_progress",
        "gauge",
        "1 while a failover or switchover runs.",
        &one(u64::from(view.failover_in_progress)),
    );
    metric(
        "keel_monitor_failovers_total",
        "counter",
        "Failovers and switchovers completed since the monitor started.",
        &one(stats.failovers_total),
    );
    metric(
        "keel_monitor_nodes",
        "gauge",
        "Registered nodes.",
        &one(view.nodes.len() as u64),
    );
    metric(
        "keel_monitor_nodes_healthy",
        "gauge",
        "Registered nodes that heartbeated within the heartbeat timeout.",
        &one(view.nodes.iter().filter(|n| n.healthy).count() as u64),
    );
    let per_node = |f: &dyn Fn(&crate::wire::NodeStatus) -> u64| -> Vec<(String, u64)> {
        view.nodes
            .iter()
            .map(|n| (format!("{{node=\"{}\"}}", n.node), f(n)))
            .collect()
    };
    metric(
        "keel_monitor_node_lsn",
        "gauge",
        "The last lsn each node reported (or its primary reported for it).",
        &per_node(&|n| n.lsn.0),
    );
    metric(
        "keel_monitor_node_healthy",
        "gauge",
        "1 when the node heartbeated within the heartbeat timeout.",
        &per_node(&|n| u64::from(n.healthy)),
    );
    metric(
        "keel_monitor_node_promotable",
        "gauge",
        "1 when the node could be promoted now.",
        &per_node(&|n| u64::from(n.promotable)),
    );
    metric(
        "keel_monitor_heartbeats_received_total",
        "counter",
        "Heartbeats accepted.",
        &one(stats.heartbeats_received),
    );
    metric(
        "keel_monitor_heartbeats_refused_total",
        "counter",
        "Heartbeats refused (malformed, unknown node, stale incarnation or epoch).",
        &one(stats.heartbeats_refused + malformed),
    );
    metric(
        "keel_monitor_events_total",
        "counter",
        "Events published since the monitor started (the id of the newest).",
        &one(last_event),
    );
    out
}

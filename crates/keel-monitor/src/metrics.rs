//! The Prometheus text of `GET /metrics`.

use std::fmt::Write;

use crate::machine::Stats;
use crate::wire::ClusterView;

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

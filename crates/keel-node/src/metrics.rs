//! `/metrics`: the node's state in Prometheus text format.
//!
//! Everything here is read from the shared state at scrape time (positions, link states,
//! a few counters), so a hand-written exposition of a dozen lines does the job without a
//! metrics registry.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use keel_core::Role;

use crate::shared::{LinkState, Shared};

/// Renders the metrics.
pub fn render(shared: &Shared) -> String {
    let status = shared.store.status();
    let role = shared.role();
    let node = shared.config.id.as_str();
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{{node=\"{node}\"{labels}}} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    metric(
        "keel_node_is_primary",
        "gauge",
        "1 if this node is the primary",
        &one(u64::from(role.role == Role::Primary)),
    );
    metric(
        "keel_node_epoch",
        "gauge",
        "The highest epoch this node has seen",
        &one(status.epoch.0),
    );
    metric(
        "keel_node_last_lsn",
        "gauge",
        "The last log position this node holds",
        &one(status.last.lsn.0),
    );
    metric(
        "keel_node_snapshot_lsn",
        "gauge",
        "The last log position folded into the snapshot",
        &one(status.snapshot.lsn.0),
    );
    let s = &shared.stats;
    metric(
        "keel_node_writes_total",
        "counter",
        "Writes answered, by outcome",
        &[
            (
                ",outcome=\"ok\"".into(),
                s.writes_ok.load(Ordering::Relaxed) as f64,
            ),
            (
                ",outcome=\"rejected\"".into(),
                s.writes_rejected.load(Ordering::Relaxed) as f64,
            ),
            (
                ",outcome=\"unavailable\"".into(),
                s.writes_unavailable.load(Ordering::Relaxed) as f64,
            ),
        ],
    );
    metric(
        "keel_node_commits_total",
        "counter",
        "Group commits",
        &one(s.commits.load(Ordering::Relaxed)),
    );
    metric(
        "keel_node_committed_ops_total",
        "counter",
        "Operations in those commits",
        &one(s.committed_ops.load(Ordering::Relaxed)),
    );
    metric(
        "keel_node_commit_seconds_total",
        "counter",
        "Time spent in group commits",
        &[(
            String::new(),
            s.commit_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )],
    );
    metric(
        "keel_node_heartbeats_total",
        "counter",
        "Heartbeats to the monitor, by outcome (monitored nodes only)",
        &[
            (
                ",outcome=\"ok\"".into(),
                s.heartbeats_ok.load(Ordering::Relaxed) as f64,
            ),
            (
                ",outcome=\"failed\"".into(),
                s.heartbeats_failed.load(Ordering::Relaxed) as f64,
            ),
        ],
    );
    let mut streaming = Vec::new();
    let mut lag = Vec::new();
    for link in &shared.links() {
        let label = format!(",standby=\"{}\"", link.url);
        let acked = link.acked;
        streaming.push((
            label.clone(),
            f64::from(u8::from(link.state == LinkState::Streaming)),
        ));
        lag.push((label, status.last.lsn.0.saturating_sub(acked.0) as f64));
    }
    metric(
        "keel_replication_streaming",
        "gauge",
        "1 if the standby is connected and up to date",
        &streaming,
    );
    metric(
        "keel_replication_lag_entries",
        "gauge",
        "Entries the standby has not confirmed",
        &lag,
    );
    out
}

//! Where the primary is: the decision every client of the data tier makes from the
//! monitor's view ([`primary_of`]), and how to say a failover's progress to a person.

use crate::wire::{ClusterView, Failover, FailoverPhase};

/// A node to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its id, when known (from the monitor).
    pub name: Option<String>,
    /// Its base URL, without a trailing `/`.
    pub url: String,
}

impl Target {
    /// Its id if known, else its URL: how to name it to a person.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.url)
    }
}

/// Where the primary is, as far as the monitor's view can tell now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Send to it.
    Node(Target),
    /// Nowhere yet: wait and ask again. The reason, for a person.
    Wait(String),
}

/// The primary in a monitor's view, or why there is none to send to right now: a
/// failover is running, none is named yet, or the one named has stopped heartbeating (a
/// request to a frozen primary would hang until its timeout; the monitor's verdict comes
/// sooner).
pub fn primary_of(view: &ClusterView) -> Found {
    if let Some(f) = &view.failover {
        return Found::Wait(describe_failover(f));
    }
    if view.failover_in_progress {
        return Found::Wait("failover in progress".to_owned());
    }
    let Some(primary) = &view.primary else {
        return Found::Wait("the monitor names no primary yet".to_owned());
    };
    let status = view.nodes.iter().find(|n| n.node == primary.node);
    if status.is_some_and(|s| !s.healthy) {
        return Found::Wait(format!(
            "{} (the primary) is not heartbeating; waiting for the monitor to fail over",
            primary.node
        ));
    }
    Found::Node(Target {
        name: Some(primary.node.to_string()),
        url: primary.url.trim_end_matches('/').to_owned(),
    })
}

/// `failover in progress (promoting app2: waiting for app1's lease to run out)`
pub fn describe_failover(f: &Failover) -> String {
    let step = match f.phase {
        FailoverPhase::Draining => format!("{} is draining", f.from),
        FailoverPhase::WaitingForLeases => format!("waiting for {}'s lease to run out", f.from),
        FailoverPhase::Promoting => format!("{} is taking over", f.to),
    };
    format!("failover in progress (promoting {}: {step})", f.to)
}

#[cfg(test)]
mod tests {
    use keel_core::{Epoch, Lsn, NodeId, Role};

    use super::*;
    use crate::wire::{FailoverReason, NodeStatus, PrimaryRef};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("id")
    }

    fn view(healthy: bool, failover: Option<Failover>) -> ClusterView {
        ClusterView {
            monitors: None,
            group: None,
            groups: Vec::new(),
            slots_version: 0,
            version: 3,
            epoch: Epoch(1),
            primary: Some(PrimaryRef {
                node: id("app1"),
                url: "http://127.0.0.1:8081/".to_owned(),
            }),
            failover_in_progress: failover.is_some(),
            failover,
            nodes: vec![NodeStatus {
                node: id("app1"),
                url: "http://127.0.0.1:8081".to_owned(),
                role: Role::Primary,
                sync: false,
                promotable: false,
                why_not_promotable: None,
                lsn: Lsn(5),
                epoch: Epoch(1),
                healthy,
                last_heartbeat_ms_ago: Some(10),
            }],
        }
    }

    #[test]
    fn the_primary_is_sent_to_only_while_it_heartbeats_and_no_failover_runs() {
        assert_eq!(
            primary_of(&view(true, None)),
            Found::Node(Target {
                name: Some("app1".to_owned()),
                url: "http://127.0.0.1:8081".to_owned()
            })
        );
        assert!(
            matches!(primary_of(&view(false, None)), Found::Wait(w) if w.contains("not heartbeating"))
        );
        let failover = Failover {
            reason: FailoverReason::PrimaryFailed,
            from: id("app1"),
            to: id("app2"),
            epoch: Epoch(2),
            phase: FailoverPhase::WaitingForLeases,
        };
        assert_eq!(
            primary_of(&view(true, Some(failover))),
            Found::Wait(
                "failover in progress (promoting app2: waiting for app1's lease to run out)"
                    .to_owned()
            )
        );
        let mut flagged = view(true, None);
        flagged.failover_in_progress = true;
        assert_eq!(
            primary_of(&flagged),
            Found::Wait("failover in progress".to_owned())
        );
        let mut none = view(true, None);
        none.primary = None;
        assert_eq!(
            primary_of(&none),
            Found::Wait("the monitor names no primary yet".to_owned())
        );
    }
}

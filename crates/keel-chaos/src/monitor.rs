//! What `keel up` reads from its monitor: the cluster view, to start
//! the recorded primary first, to wait for a primary and for promotable standbys before
//! it announces the system, and to stop the primary before its standbys; and the event
//! stream (`GET /v1/events`), printed as it comes.
//!
//! The reading itself is `keel_client::monitor`'s; this adds the waiting and the
//! printing.

use std::time::Duration;

use keel_client::wire::ClusterView;
use keel_core::Role;
use tokio::time::Instant;

use crate::plan::Spec;

/// How long to wait for the monitor to name a primary, and for the standbys to catch up
/// and become promotable, before going on without (with a note).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one read of the view may take.
const VIEW_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the view is read while waiting.
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// How long to wait before opening the event stream again once it broke.
const RECONNECT: Duration = Duration::from_millis(500);

/// `keel up`'s monitor, read from outside.
#[derive(Debug, Clone)]
pub(crate) struct MonitorClient {
    http: reqwest::Client,
    url: String,
    /// The group it reads, under a monitor of several (`keel up --shards`); `None`: the
    /// first.
    group: Option<keel_core::slots::GroupId>,
}

impl MonitorClient {
    pub(crate) fn new(http: reqwest::Client, url: String) -> MonitorClient {
        MonitorClient {
            http,
            url,
            group: None,
        }
    }

    /// The same monitor, reading group `group`.
    pub(crate) fn of_group(&self, group: &keel_core::slots::GroupId) -> MonitorClient {
        MonitorClient {
            group: Some(group.clone()),
            ..self.clone()
        }
    }

    /// The monitor's view (of its group), or `None` when it does not answer.
    /// The slot table, under a monitor of several groups.
    pub(crate) async fn slots(&self) -> Option<keel_core::slots::SlotTable> {
        keel_client::monitor::slots_as(&self.http, &self.url, VIEW_TIMEOUT, None)
            .await
            .ok()
    }

    pub(crate) async fn view(&self) -> Option<ClusterView> {
        match &self.group {
            Some(group) => {
                keel_client::monitor::group_as(&self.http, &self.url, group, VIEW_TIMEOUT, None)
                    .await
                    .ok()
            }
            None => keel_client::monitor::cluster(&self.http, &self.url, VIEW_TIMEOUT)
                .await
                .ok(),
        }
    }

    /// The node the monitor names primary, if it answers and names one.
    pub(crate) async fn primary(&self) -> Option<String> {
        self.view()
            .await
            .and_then(|v| v.primary)
            .map(|p| p.node.to_string())
    }

    /// Waits until the monitor names a primary that heartbeats, with no failover
    /// running; `false` after [`SETTLE_TIMEOUT`] (the other nodes may be what it waits
    /// for).
    pub(crate) async fn wait_for_primary(&self) -> bool {
        self.settle(has_live_primary).await
    }

    /// Waits until every one of `members` has registered and every standby has caught
    /// up and is promotable, so that the system announced can fail over at once; `false`
    /// after [`SETTLE_TIMEOUT`].
    pub(crate) async fn wait_for_promotable(&self, members: &[Spec]) -> bool {
        self.settle(|v| ready_to_fail_over(v, members)).await
    }

    /// Reads the view until `done` holds; `false` after [`SETTLE_TIMEOUT`].
    async fn settle(&self, done: impl Fn(&ClusterView) -> bool) -> bool {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if self.view().await.is_some_and(|v| done(&v)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Prints every event of the monitor, one line each, naming it `who` (its name in
    /// the plan), from its first (`since=0`: the
    /// history of this monitor's life, so that nothing between its start and this
    /// subscription is missed), for as long as the task runs. When the stream breaks (the
    /// monitor was killed), it opens it again every half second, quietly, and resumes
    /// after the last event printed. `http` must have no timeout on the whole request: a
    /// stream lasts as long as the monitor does.
    pub(crate) async fn follow_events(self, http: reqwest::Client, who: &'static str) {
        let mut last = 0;
        loop {
            if let Ok(mut stream) =
                keel_client::monitor::EventStream::open(&http, &self.url, Some(last)).await
            {
                while let Ok(Some(data)) = stream.next_data().await {
                    // Each as `keel client` prints it (`keel_client::monitor::Seen`).
                    let Ok(seen) = keel_client::monitor::Seen::parse(&data) else {
                        break;
                    };
                    let (id, line) = (seen.id, seen.line_from(who));
                    // The monitor replays only what follows `since`; this guards against
                    // printing an event twice should it ever replay more.
                    if id > last {
                        last = id;
                        crate::say_from(who, &line, &line);
                    }
                }
            }
            tokio::time::sleep(RECONNECT).await;
        }
    }
}

/// A primary is named, heartbeats, and no failover runs.
fn has_live_primary(v: &ClusterView) -> bool {
    matches!(keel_client::primary_of(v), keel_client::Found::Node(_))
}

/// Every one of `members` registered, and every standby promotable.
fn ready_to_fail_over(v: &ClusterView, members: &[Spec]) -> bool {
    // A node answers /health before it has registered: the view may not list it yet,
    // and a standby missing from it is not one that is ready.
    let registered = members
        .iter()
        .all(|s| v.nodes.iter().any(|n| n.node.as_str() == s.name));
    registered
        && v.nodes
            .iter()
            .filter(|n| n.role == Role::Standby)
            .all(|n| n.promotable)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::Settings;
    use crate::credentials::Credentials;
    use crate::plan::{Placement, Plan, plan};

    /// A view of app1 and app2: who is primary, who heartbeats, who may be promoted.
    fn view(primary: Option<&str>, failover: bool, app2: (&str, bool, bool)) -> ClusterView {
        let (role2, healthy2, promotable2) = app2;
        let primary = primary.map_or(
            serde_json::Value::Null,
            |p| serde_json::json!({"node": p, "url": "http://127.0.0.1:8081"}),
        );
        serde_json::from_value(serde_json::json!({
            "version": 3, "epoch": 2, "primary": primary,
            "failover_in_progress": failover, "failover": null,
            "nodes": [
                {"node": "app1", "url": "http://127.0.0.1:8081", "role": "primary", "sync": false,
                 "promotable": false, "why_not_promotable": null, "lsn": 7, "epoch": 2,
                 "healthy": true, "last_heartbeat_ms_ago": 20},
                {"node": "app2", "url": "http://127.0.0.1:8082", "role": role2, "sync": promotable2,
                 "promotable": promotable2, "why_not_promotable": null, "lsn": 7, "epoch": 2,
                 "healthy": healthy2, "last_heartbeat_ms_ago": 20}
            ]
        }))
        .expect("a cluster view")
    }

    fn two_nodes() -> Plan {
        let settings = Settings {
            nodes: 2,
            shards: 1,
            data_dir: "/tmp/d".into(),
            base_port: 8081,
            store: None,
            monitors: 1,
            monitor_port: 8070,
            services: 0,
            service_port: 5056,
            proxy_port: 8080,
            proxy_admin_port: 8090,
            control_port: 8060,
            verbose: false,
            netns: false,
            tls: false,
            restart: Default::default(),
            postgres: None,
        };
        plan(
            &settings,
            &Credentials::in_dir(Path::new("/tmp/d")),
            &Placement::loopback(),
        )
        .expect("a plan")
    }

    #[test]
    fn a_primary_counts_once_it_heartbeats_and_no_failover_runs() {
        assert!(has_live_primary(&view(
            Some("app1"),
            false,
            ("standby", true, true)
        )));
        assert!(!has_live_primary(&view(
            None,
            false,
            ("standby", true, true)
        )));
        assert!(
            !has_live_primary(&view(Some("app1"), true, ("standby", true, true))),
            "a failover runs"
        );
        assert!(
            !has_live_primary(&view(Some("app2"), false, ("primary", false, false))),
            "the primary named does not heartbeat"
        );
    }

    #[test]
    fn the_tier_is_ready_once_every_node_registered_and_every_standby_is_promotable() {
        let plan = two_nodes();
        assert!(ready_to_fail_over(
            &view(Some("app1"), false, ("standby", true, true)),
            &plan.nodes
        ));
        assert!(!ready_to_fail_over(
            &view(Some("app1"), false, ("standby", true, false)),
            &plan.nodes
        ));
        let mut one = view(Some("app1"), false, ("standby", true, true));
        one.nodes.truncate(1);
        assert!(
            !ready_to_fail_over(&one, &plan.nodes),
            "app2 answers /health but has not registered yet"
        );
    }
}

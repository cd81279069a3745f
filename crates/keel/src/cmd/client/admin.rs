//! The operator's commands: `kill-primary` (the seed's `-kill-primary`), `failover` (a
//! manual switchover through the monitor) and `cluster` (the monitor's view).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use keel_client::wire::{ClusterView, EventKind, FailoverRequest, NodeStatus};
use keel_core::{NodeId, Role};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use super::conn::Req;
use super::events::{EventStream, Seen, stream_client};
use super::route::{Found, monitor_refusal};
use super::state::print_view_header;
use super::{Client, print_json};

/// How long `kill-primary --watch` and `failover` follow the monitor's events for the
/// new primary: a failover at the default settings takes about a second, a switchover a
/// little more; ten times that means something is stuck, which the person should see.
const WATCH_LIMIT: Duration = Duration::from_secs(10);

/// How a watched failover ended.
enum Ending {
    /// `failover_done`: this node is primary.
    Done(String),
    /// The monitor gave up on it (`failover_abandoned`), with its reason.
    Abandoned(String),
    /// Nothing conclusive within [`WATCH_LIMIT`] (or the stream ended).
    Unknown,
}

impl Client {
    /// `keel client kill-primary [--watch]`: POST /admin/kill to the primary, wait until
    /// it stops answering, and with `--watch` follow the monitor until a standby has
    /// taken over.
    pub(super) async fn kill_primary(&self, watch: bool) -> anyhow::Result<ExitCode> {
        let (token, origin) = self.load_token()?;
        let target = match self.find_primary(None, None).await? {
            Found::Node(t) => t,
            Found::Wait(why) => bail!("no primary to kill right now: {why}"),
        };
        let (primary, name) = if self.route_is_direct() {
            // The node given may be a standby: the primary is the one it names.
            let health = self.conn.health(&target.url).await?;
            let (url, health) = self.locate_primary(&target.url, health).await?;
            (url, health.node)
        } else {
            let name = target.name.clone().unwrap_or_else(|| target.url.clone());
            (target.url, name)
        };
        // Subscribed before the kill, so that no step of the failover is missed.
        let mut stream = if watch {
            self.open_events().await
        } else {
            None
        };

        let mut req = Req::new(Method::POST, &["admin", "kill"]);
        req.bearer = Some(token.secret().to_owned());
        let answer = self.conn.send(&primary, &req).await?;
        match answer.status {
            StatusCode::UNAUTHORIZED => bail!(
                "the admin token (from {origin}) was refused by {}: check --token-file or KEEL_TOKEN",
                answer.who()
            ),
            StatusCode::FORBIDDEN => bail!(
                "{}; start the nodes with --token-file, as `keel up` does",
                answer.failure()
            ),
            s if s.is_success() => {}
            _ => return Err(answer.failure()),
        }
        // The node ends "at once" but after its answer went out: wait until it stops
        // answering, so that the next command sees it gone.
        let deadline = Instant::now() + Duration::from_secs(3);
        let gone = loop {
            if self
                .conn
                .send(&primary, &Req::get(&["health"]))
                .await
                .is_err()
            {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        if !gone {
            eprintln!("{name} at {primary} accepted the kill but still answers after 3 s");
            return Ok(ExitCode::FAILURE);
        }
        if !self.json {
            println!("killed {name} (the primary) at {primary}");
        }
        let Some(stream) = stream.as_mut() else {
            if self.json {
                print_json(&json!({"killed": name, "url": primary}))?;
            } else if !self.route_is_direct() {
                println!(
                    "the monitor promotes a standby once it has missed {name}'s heartbeats; \
                     `keel client cluster` shows when (or add --watch)"
                );
            }
            return Ok(ExitCode::SUCCESS);
        };
        let (ending, events) = self.follow_failover(stream).await;
        let new_primary = self.report_ending(&ending).await;
        if self.json {
            print_json(&json!({
                "killed": name,
                "url": primary,
                "events": events,
                "new_primary": new_primary,
            }))?;
        }
        Ok(match ending {
            Ending::Done(_) => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        })
    }

    /// `keel client failover [--to NODE]`: asks the monitor for a switchover and follows
    /// it to the end.
    pub(super) async fn failover(&self, to: Option<NodeId>) -> anyhow::Result<ExitCode> {
        let (token, origin) = self.load_token()?;
        // Of a group of monitors, the leader decides: ask it.
        let monitor = &match stream_client(self.timeout, self.tls.clone()) {
            Ok(http) => keel_client::monitor::leading(&http, &self.monitor, self.timeout, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            Err(e) => anyhow::bail!("{e}"),
        };
        let mut stream = self.open_events().await;
        let mut req = Req::new(Method::POST, &["v1", "failover"]);
        req.bearer = Some(token.secret().to_owned());
        let body = serde_json::to_vec(&FailoverRequest { to: to.clone() })?;
        req.body = Some(("application/json", body));
        let answer = self.conn.try_send(monitor, &req).await.map_err(|u| {
            anyhow::anyhow!(
                "cannot reach the monitor at {monitor}: {} — is `keel up` running?",
                u.reason
            )
        })?;
        let code = answer.api_error().map(|e| e.error).unwrap_or_default();
        match (answer.status, code.as_str()) {
            (s, _) if s.is_success() => {}
            (StatusCode::UNAUTHORIZED, _) => bail!(
                "the admin token (from {origin}) was refused by the monitor at {monitor}: \
                 check --token-file or KEEL_TOKEN"
            ),
            (StatusCode::FORBIDDEN, _) => bail!(
                "{}; start the monitor with --token-file, as `keel up` does",
                monitor_refusal(monitor, &answer)
            ),
            (StatusCode::CONFLICT, "no_promotable_standby") => {
                let mut msg = format!("{}", monitor_refusal(monitor, &answer));
                if let Ok(view) = self.cluster_view(monitor).await.map_err(|(e, _)| e) {
                    for n in view.nodes.iter().filter(|n| n.role == Role::Standby) {
                        if let Some(why) = &n.why_not_promotable {
                            msg.push_str(&format!("\n  {}: {why}", n.node));
                        }
                    }
                }
                bail!(msg);
            }
            (StatusCode::CONFLICT, "failover_in_progress") => bail!(
                "{}; wait for it to finish (`keel client cluster` shows it)",
                monitor_refusal(monitor, &answer)
            ),
            _ => return Err(monitor_refusal(monitor, &answer)),
        }
        if !self.json {
            match &to {
                Some(to) => println!("switchover to {to} requested"),
                None => println!("switchover requested"),
            }
        }
        let (ending, events) = match stream.as_mut() {
            Some(stream) => self.follow_failover(stream).await,
            None => (self.poll_failover().await, Vec::new()),
        };
        let new_primary = self.report_ending(&ending).await;
        if self.json {
            print_json(&json!({"events": events, "new_primary": new_primary}))?;
        }
        Ok(match ending {
            Ending::Done(_) => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        })
    }

    /// `keel client monitors add|remove`: changes a group's membership through its
    /// leader.
    pub(super) async fn monitors(
        &self,
        command: crate::cli::MonitorsCommand,
    ) -> anyhow::Result<ExitCode> {
        use crate::cli::MonitorsCommand;
        let (token, _) = self.load_token()?;
        let http = stream_client(self.timeout, self.tls.clone())?;
        let leader = keel_client::monitor::leading(&http, &self.monitor, self.timeout, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut req = match &command {
            MonitorsCommand::Add { joining } => {
                let (id, url) = joining.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("{joining:?} is not ID=URL (e.g. m4=http://127.0.0.1:8073)")
                })?;
                let mut req = Req::new(Method::POST, &["v1", "monitors"]);
                let body = serde_json::to_vec(&json!({"id": id, "url": url}))?;
                req.body = Some(("application/json", body));
                req
            }
            MonitorsCommand::Remove { id } => Req::new(Method::DELETE, &["v1", "monitors", id]),
        };
        req.bearer = Some(token.secret().to_owned());
        let answer = self.conn.try_send(&leader, &req).await.map_err(|u| {
            anyhow::anyhow!(
                "cannot reach the monitors' leader at {leader}: {}",
                u.reason
            )
        })?;
        if !answer.status.is_success() {
            return Err(answer.failure());
        }
        let body: serde_json::Value = answer.json()?;
        if self.json {
            print_json(&body)?;
        } else {
            println!("{}", body["message"].as_str().unwrap_or("done"));
            for m in body["members"].as_array().into_iter().flatten() {
                let role = if m["voter"] == true {
                    "voter"
                } else {
                    "learner"
                };
                println!(
                    "  {}  {}  {role}",
                    m["id"].as_str().unwrap_or("?"),
                    m["url"].as_str().unwrap_or("?")
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `keel client cluster`: the monitor's view.
    pub(super) async fn cluster(&self) -> anyhow::Result<ExitCode> {
        let view = self.cluster_view(&self.monitor).await.map_err(|(e, _)| e)?;
        if view.groups.len() > 1 {
            return self.groups(&view).await;
        }
        if self.json {
            print_json(&serde_json::to_value(&view)?)?;
        } else {
            print_view_header(&self.monitor, &view, false);
            if let Some(group) = &view.monitors {
                println!("{}\n", super::print::monitors_line(group));
            }
            print_nodes(&view.nodes);
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `cluster` under a monitor of several groups (docs/shards.md): the slot table's
    /// version, then each group with its slot ranges, epoch, primary and nodes.
    async fn groups(&self, first: &ClusterView) -> anyhow::Result<ExitCode> {
        let (http, timeout) = (self.conn.http(), self.conn.timeout());
        let monitor = &self.monitor;
        let table = keel_client::monitor::slots_as(http, monitor, timeout, None)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the slot table from {monitor}: {e}"))?;
        let mut views = Vec::new();
        for group in &first.groups {
            let view = keel_client::monitor::group_as(http, monitor, group, timeout, None)
                .await
                .map_err(|e| anyhow::anyhow!("cannot read group {group} from {monitor}: {e}"))?;
            views.push((group.clone(), view));
        }
        let slots_of = |group: &keel_core::slots::GroupId| {
            let owned = table.slots_text(group);
            if owned.is_empty() {
                "none".to_owned()
            } else {
                owned
            }
        };
        if self.json {
            let groups: Vec<serde_json::Value> = views
                .iter()
                .map(|(group, view)| {
                    serde_json::json!({
                        "group": group, "slots": slots_of(group),
                        "slot_count": table.count(group), "view": view,
                    })
                })
                .collect();
            print_json(&serde_json::json!({
                "slots_version": table.version(), "groups": groups,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "monitor {monitor}: {} groups, slot table version {}\n",
            views.len(),
            table.version()
        );
        if let Some(group) = &first.monitors {
            println!("{}\n", super::print::monitors_line(group));
        }
        for (group, view) in &views {
            let primary = view.primary.as_ref().map_or_else(
                || "no primary".to_owned(),
                |p| format!("primary {}", p.node),
            );
            let failover = if view.failover_in_progress {
                ", failover in progress"
            } else {
                ""
            };
            println!(
                "group {group}: slots {} ({} slots), epoch {}, {primary}{failover}",
                slots_of(group),
                table.count(group),
                view.epoch
            );
            print_nodes(&view.nodes);
            println!();
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The monitor's event stream, or `None` (with a note) when it cannot be opened.
    async fn open_events(&self) -> Option<EventStream> {
        let opened = match stream_client(self.timeout, self.tls.clone()) {
            Ok(http) => EventStream::open(&http, &self.monitor, None).await,
            Err(e) => Err(e),
        };
        match opened {
            Ok(stream) => Some(stream),
            Err(e) => {
                eprintln!("note: cannot follow the monitor's events: {e:#}");
                None
            }
        }
    }

    /// Prints events (unless `--json`) until the failover ends or [`WATCH_LIMIT`] passes;
    /// returns how it ended and the events seen, as JSON.
    async fn follow_failover(&self, stream: &mut EventStream) -> (Ending, Vec<serde_json::Value>) {
        let deadline = Instant::now() + WATCH_LIMIT;
        let mut seen = Vec::new();
        loop {
            let next = match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) | Ok(Ok(None)) => return (Ending::Unknown, seen),
                Ok(Err(e)) => {
                    eprintln!("note: {e:#}");
                    return (Ending::Unknown, seen);
                }
                Ok(Ok(Some(event))) => event,
            };
            self.show(&next, &mut seen);
            if next.is(EventKind::FailoverDone) {
                return (Ending::Done(next.node.unwrap_or_default()), seen);
            }
            if next.is(EventKind::FailoverAbandoned) {
                return (Ending::Abandoned(next.message), seen);
            }
        }
    }

    /// Without events: asks the monitor until no failover is running.
    async fn poll_failover(&self) -> Ending {
        let deadline = Instant::now() + WATCH_LIMIT;
        while Instant::now() < deadline {
            if let Ok(view) = self.cluster_view(&self.monitor).await
                && view.failover.is_none()
                && let Some(p) = view.primary
            {
                return Ending::Done(p.node.to_string());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ending::Unknown
    }

    fn show(&self, event: &Seen, seen: &mut Vec<serde_json::Value>) {
        if self.json {
            seen.push(json!({
                "id": event.id,
                "at": event.at,
                "kind": event.kind,
                "node": event.node,
                "message": event.message,
            }));
        } else {
            println!("{}", event.line());
        }
    }

    /// Says how a watched failover ended; returns the new primary, if any.
    async fn report_ending(&self, ending: &Ending) -> Option<String> {
        let view = self.cluster_view(&self.monitor).await.ok();
        match ending {
            Ending::Done(node) => {
                let epoch = view.as_ref().map(|v| v.epoch.to_string());
                if !self.json {
                    match epoch {
                        Some(epoch) => println!("{node} is the primary now (epoch {epoch})"),
                        None => println!("{node} is the primary now"),
                    }
                }
                Some(node.clone())
            }
            Ending::Abandoned(why) => {
                eprintln!("the monitor abandoned the failover: {why}");
                None
            }
            Ending::Unknown => {
                let state = view.as_ref().map_or_else(
                    || "the monitor does not answer".to_owned(),
                    |v| match (&v.failover, &v.primary) {
                        (Some(f), _) => keel_client::discovery::describe_failover(f),
                        (None, Some(p)) => format!("the primary is {}", p.node),
                        (None, None) => "there is no primary".to_owned(),
                    },
                );
                eprintln!(
                    "no new primary within {} s ({state}); `keel client cluster` shows why",
                    WATCH_LIMIT.as_secs()
                );
                None
            }
        }
    }
}

/// The nodes of a view as aligned lines.
fn print_nodes(nodes: &[NodeStatus]) {
    let name_width = nodes
        .iter()
        .map(|n| n.node.as_str().len())
        .max()
        .unwrap_or(0);
    let url_width = nodes.iter().map(|n| n.url.len()).max().unwrap_or(0);
    for n in nodes {
        let heard = match (n.healthy, n.last_heartbeat_ms_ago) {
            (true, Some(ms)) => format!("heartbeat {ms} ms ago"),
            (true, None) => "healthy".to_owned(),
            (false, Some(ms)) => format!("SILENT for {:.1} s", ms as f64 / 1000.0),
            (false, None) => "SILENT (no heartbeat since the monitor started)".to_owned(),
        };
        let standing = match n.role {
            Role::Primary => String::new(),
            Role::Standby if n.promotable => "  sync, promotable".to_owned(),
            Role::Standby => format!(
                "  {}not promotable: {}",
                if n.sync { "sync, " } else { "" },
                n.why_not_promotable
                    .as_deref()
                    .unwrap_or("(no reason given)")
            ),
        };
        println!(
            "  {:name_width$}  {:7}  {:url_width$}  epoch {}  lsn {}  {heard}{standing}",
            n.node.as_str(),
            n.role.as_str(),
            n.url,
            n.epoch,
            n.lsn,
        );
    }
}

//! What `keel client state` shows: the nodes, from the monitor's view or, without it,
//! from the node given — the primary it names and that primary's standbys.

use anyhow::{Context, bail};
use keel_client::discovery::describe_failover;
use keel_client::wire::ClusterView;
use keel_core::Role;

use super::conn::{Health, normalize_url};
use super::{Client, DEFAULT_NODE};
use crate::cli::StateWhich;

/// A node `state` shows.
pub(super) struct StateTarget {
    pub(super) name: Option<String>,
    pub(super) url: String,
    /// The role the monitor assigned, when asked.
    pub(super) role: Option<Role>,
    /// Whether it should answer (the monitor has heard from it lately, or it was not
    /// asked).
    pub(super) expected_up: bool,
}

impl StateTarget {
    /// The heading of a node that did not answer: `app1 (primary per the monitor) URL`.
    pub(super) fn title(&self) -> String {
        let name = self.name.as_deref().unwrap_or("?");
        match self.role {
            Some(role) => format!("{name} ({role} per the monitor) {}", self.url),
            None => format!("{name} {}", self.url),
        }
    }
}

impl Client {
    /// The nodes `state` shows, each with what is known about it.
    pub(super) async fn state_targets(
        &self,
        which: StateWhich,
    ) -> anyhow::Result<Vec<StateTarget>> {
        if self.route.direct_node().is_none() {
            match self.cluster_view(&self.route.monitor).await {
                Ok(view) => {
                    let view = self.entries_group(view).await?;
                    print_view_header(&self.route.monitor, &view, self.json);
                    let wanted = |role: Role| match which {
                        StateWhich::All => true,
                        StateWhich::Primary => role == Role::Primary,
                        StateWhich::Standby => role == Role::Standby,
                    };
                    let targets: Vec<StateTarget> = view
                        .nodes
                        .iter()
                        // The primary first, as a person reads it.
                        .filter(|n| wanted(n.role) && n.role == Role::Primary)
                        .chain(
                            view.nodes
                                .iter()
                                .filter(|n| wanted(n.role) && n.role != Role::Primary),
                        )
                        .map(|n| StateTarget {
                            name: Some(n.node.to_string()),
                            url: n.url.clone(),
                            role: Some(n.role),
                            expected_up: n.healthy,
                        })
                        .collect();
                    if targets.is_empty() {
                        bail!(
                            "the monitor at {} knows no {} node",
                            self.route.monitor,
                            match which {
                                StateWhich::Primary => "primary",
                                StateWhich::Standby => "standby",
                                StateWhich::All => "",
                            }
                        );
                    }
                    return Ok(targets);
                }
                Err((e, true)) => return Err(e),
                Err((e, false)) if !self.route.may_fall_back => return Err(e),
                Err(_) => {
                    eprintln!(
                        "note: no monitor answers at {}; asking {DEFAULT_NODE} directly \
                         (pass --monitor URL or --node URL to choose)",
                        self.route.monitor
                    );
                    self.route.fell_back.set(true);
                }
            }
        }
        let node = self.route.direct_node().unwrap_or(DEFAULT_NODE).to_owned();
        self.state_targets_from_node(&node, which).await
    }

    /// Without the monitor: the primary's URL and health, found from the node at `base`
    /// (whose health is `health`): the node itself when it is primary, else the primary
    /// it names.
    pub(super) async fn locate_primary(
        &self,
        base: &str,
        health: Health,
    ) -> anyhow::Result<(String, Health)> {
        if health.role == "primary" {
            return Ok((base.to_owned(), health));
        }
        let Some(primary) = health.primary.as_deref().filter(|p| !p.is_empty()) else {
            bail!(
                "{} at {base} is a {} and does not know its primary (no primary is connected to it); \
                 pass the primary's URL with --node",
                health.node,
                health.role
            );
        };
        let primary = normalize_url(primary)?;
        let found = self
            .conn
            .health(&primary)
            .await
            .with_context(|| format!("{} names {primary} as its primary", health.node))?;
        if found.role != "primary" {
            bail!(
                "{} names {primary} as its primary, but {} there is a {}; a failover may be under way, try again",
                health.node,
                found.node,
                found.role
            );
        }
        Ok((primary, found))
    }

    /// Without the monitor: the node given, the primary it names, the primary's standbys.
    /// Under a monitor of several groups, the view of the group that owns the entries
    /// map's slot (docs/shards.md), which a move may have given to any group; the view
    /// given otherwise.
    async fn entries_group(&self, view: ClusterView) -> anyhow::Result<ClusterView> {
        if view.groups.len() < 2 {
            return Ok(view);
        }
        let (http, timeout, monitor) = (self.conn.http(), self.conn.timeout(), &self.route.monitor);
        let table = keel_client::monitor::slots_as(http, monitor, timeout, None)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the slot table from {monitor}: {e}"))?;
        let owner = table
            .owner_of(keel_client::node::ENTRIES_KEY.as_bytes())
            .clone();
        if !self.json {
            println!(
                "the entries map is in group {owner} (slot {} of table version {})",
                keel_core::slots::slot_of(keel_client::node::ENTRIES_KEY.as_bytes()).0,
                table.version()
            );
        }
        if view.group.as_ref() == Some(&owner) {
            return Ok(view);
        }
        keel_client::monitor::group_as(http, monitor, &owner, timeout, None)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read group {owner} from {monitor}: {e}"))
    }

    async fn state_targets_from_node(
        &self,
        node: &str,
        which: StateWhich,
    ) -> anyhow::Result<Vec<StateTarget>> {
        let target = |url: String| StateTarget {
            name: None,
            url,
            role: None,
            expected_up: true,
        };
        let given = self.conn.health(node).await?;
        let given_is_standby = given.role != "primary";
        let urls: Vec<String> = match (self.locate_primary(node, given).await, which) {
            (Ok((url, _)), StateWhich::Primary) => vec![url],
            (Ok((url, health)), which) => {
                let standbys = health
                    .standbys
                    .iter()
                    .map(|s| s.url.trim_end_matches('/').to_owned());
                let mut urls: Vec<String> = match which {
                    StateWhich::All => std::iter::once(url).chain(standbys).collect(),
                    _ => standbys.collect(),
                };
                urls.dedup();
                if urls.is_empty() {
                    eprintln!("the primary at {node} has no standbys");
                }
                urls
            }
            // Without a primary a standby can still show what it holds (the seed's
            // `-get_state=standby` after the primary was killed).
            (Err(e), StateWhich::Standby | StateWhich::All) if given_is_standby => {
                eprintln!("warning: {e:#}; showing {node} only");
                vec![node.to_owned()]
            }
            (Err(e), _) => return Err(e),
        };
        Ok(urls.into_iter().map(target).collect())
    }
}

/// `monitor http://…: epoch 3, primary app1, no failover in progress` (stderr under
/// `--json`, so that stdout stays one JSON document).
pub(super) fn print_view_header(monitor: &str, view: &ClusterView, json: bool) {
    let primary = view.primary.as_ref().map_or_else(
        || "no primary".to_owned(),
        |p| format!("primary {}", p.node),
    );
    let failover = view
        .failover
        .as_ref()
        .map_or_else(|| "no failover in progress".to_owned(), describe_failover);
    let line = format!(
        "monitor {monitor}: epoch {}, {primary}, {failover}",
        view.epoch
    );
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}\n");
    }
}

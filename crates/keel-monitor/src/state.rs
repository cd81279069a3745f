//! The cluster state: what the monitor keeps durably (`monitor.json`); and, for a monitor
//! that runs several groups, each group's and the slot table ([`GroupsState`]).
//!
//! Only what must survive a restart lives here: the epoch, the primary, each node's URL,
//! incarnation and sync flags, and the failover in progress. What nodes report in their
//! heartbeats (lsn, liveness) is soft state, rebuilt from the next heartbeats.

use std::collections::BTreeMap;

use keel_core::slots::{GroupId, SlotTable};
use keel_core::{Epoch, NodeId};
use serde::{Deserialize, Serialize};

use crate::wire::Failover;

/// The version of the `monitor.json` layout.
pub const FORMAT: u32 = 1;

/// The durable cluster state. Every change bumps `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The layout version ([`FORMAT`]).
    pub format: u32,
    /// Grows by one at every change.
    pub version: u64,
    /// The current epoch; never goes back.
    pub epoch: Epoch,
    /// The node that is (or is being made) primary.
    pub primary: Option<NodeId>,
    /// Every registered node.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// The failover in progress, if any.
    pub failover: Option<Failover>,
}

impl Default for ClusterState {
    fn default() -> Self {
        Self {
            format: FORMAT,
            version: 0,
            epoch: Epoch(0),
            primary: None,
            nodes: BTreeMap::new(),
            failover: None,
        }
    }
}

/// What the monitor records about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its base URL.
    pub url: String,
    /// The incarnation it registered with last.
    pub incarnation: u64,
    /// In the sync set: the primary must wait for its acks.
    pub sync: bool,
    /// The primary confirmed it waits for its acks while it streams: it may be promoted.
    pub promotable: bool,
    /// It was primary and was replaced; cleared when it is back as a standby.
    #[serde(default)]
    pub deposed: bool,
}

impl NodeRecord {
    /// A node that just joined as a standby: not in the sync set until it caught up.
    pub fn standby(url: String, incarnation: u64) -> Self {
        Self {
            url,
            incarnation,
            sync: false,
            promotable: false,
            deposed: false,
        }
    }
}

/// Why a loaded cluster state cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The file was written by a newer keel.
    #[error("unknown format {0} (this keel reads format {FORMAT})")]
    Format(u32),
    /// The primary is not a registered node.
    #[error("the primary {0} is not among the registered nodes")]
    UnknownPrimary(NodeId),
    /// The failover names nodes that are not registered.
    #[error("the failover in progress names a node that is not registered")]
    UnknownFailoverNode,
}

impl ClusterState {
    /// Checks the references inside a loaded state, so that the state machine can rely on
    /// them (a hand-edited or damaged file is refused at start, not discovered later).
    pub fn check(&self) -> Result<(), StateError> {
        if self.format != FORMAT {
            return Err(StateError::Format(self.format));
        }
        if let Some(p) = &self.primary
            && !self.nodes.contains_key(p)
        {
            return Err(StateError::UnknownPrimary(p.clone()));
        }
        if let Some(f) = &self.failover
            && (!self.nodes.contains_key(&f.from) || !self.nodes.contains_key(&f.to))
        {
            return Err(StateError::UnknownFailoverNode);
        }
        Ok(())
    }
}

/// The version of the layout of a monitor that runs several groups.
pub const GROUPS_FORMAT: u32 = 2;

/// The group a monitor runs when it is told of none, and the one a state written before
/// groups existed becomes.
pub const FIRST_GROUP: &str = "g1";

/// [`FIRST_GROUP`] as a group's name.
pub fn first_group() -> GroupId {
    // A constant that passes the check: letters and digits.
    GroupId::new(FIRST_GROUP).unwrap_or_else(|_| unreachable!("g1 is a valid name"))
}

/// What a monitor of several groups keeps durably (docs/shards.md): each group's own
/// state, as a monitor of one group keeps it, and the slot table that says which group
/// owns each key. Every change of either bumps `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupsState {
    /// The layout version ([`GROUPS_FORMAT`]).
    pub format: u32,
    /// Grows by one at every change.
    pub version: u64,
    /// Each group's state: its epoch, primary, nodes and failover.
    pub groups: BTreeMap<GroupId, ClusterState>,
    /// Which group owns each slot.
    pub slots: SlotTable,
}

/// Why a loaded state of several groups cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupsError {
    /// The file was written by a newer keel.
    #[error("unknown format {0} (this keel reads format {GROUPS_FORMAT})")]
    Format(u32),
    /// A monitor with no group.
    #[error("no group")]
    NoGroups,
    /// A group's own state is damaged.
    #[error("group {group}: {error}")]
    Group { group: GroupId, error: StateError },
    /// A node listed in two groups.
    #[error("{node} is a node of both {first} and {second}")]
    TwoGroups {
        node: NodeId,
        first: GroupId,
        second: GroupId,
    },
    /// The table gives slots to a group the monitor does not run.
    #[error("the slot table gives slots to {0}, which is not one of the groups")]
    UnknownOwner(GroupId),
}

impl GroupsState {
    /// A new monitor of `groups`, none with a node yet, the slots split evenly among them
    /// in the order given.
    pub fn new(groups: &[GroupId]) -> Result<Self, GroupsError> {
        let slots = SlotTable::even(groups).map_err(|_| GroupsError::NoGroups)?;
        Ok(Self {
            format: GROUPS_FORMAT,
            version: 0,
            groups: groups
                .iter()
                .map(|g| (g.clone(), ClusterState::default()))
                .collect(),
            slots,
        })
    }

    /// Checks a loaded state: each group's, no node in two groups, and no slot owned by a
    /// group the monitor does not run.
    pub fn check(&self) -> Result<(), GroupsError> {
        if self.format != GROUPS_FORMAT {
            return Err(GroupsError::Format(self.format));
        }
        if self.groups.is_empty() {
            return Err(GroupsError::NoGroups);
        }
        let mut seen: BTreeMap<&NodeId, &GroupId> = BTreeMap::new();
        for (group, state) in &self.groups {
            state.check().map_err(|error| GroupsError::Group {
                group: group.clone(),
                error,
            })?;
            for node in state.nodes.keys() {
                if let Some(first) = seen.insert(node, group) {
                    return Err(GroupsError::TwoGroups {
                        node: node.clone(),
                        first: first.clone(),
                        second: group.clone(),
                    });
                }
            }
        }
        for range in self.slots.ranges() {
            if !self.groups.contains_key(&range.group) {
                return Err(GroupsError::UnknownOwner(range.group));
            }
        }
        Ok(())
    }

    /// The state of a monitor of one group, as it was written before groups existed
    /// (format 1): that group, [`FIRST_GROUP`], owning every slot.
    pub fn from_single(state: ClusterState) -> Self {
        let group = first_group();
        Self {
            format: GROUPS_FORMAT,
            version: state.version,
            slots: SlotTable::whole(group.clone()),
            groups: BTreeMap::from([(group, state)]),
        }
    }

    /// Reads a state in either layout: several groups (format 2), or one group as written
    /// before groups existed (format 1), which becomes [`FIRST_GROUP`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        if value.get("groups").is_some() {
            serde_json::from_value(value)
        } else {
            serde_json::from_value::<ClusterState>(value).map(Self::from_single)
        }
    }

    /// The group `node` is a node of, if any.
    pub fn group_of(&self, node: &NodeId) -> Option<&GroupId> {
        self.groups
            .iter()
            .find(|(_, state)| state.nodes.contains_key(node))
            .map(|(group, _)| group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str) -> GroupId {
        GroupId::new(name).expect("a group")
    }

    #[test]
    fn a_state_of_groups_with_a_node_twice_or_a_stranger_owning_slots_is_refused() {
        let mut state = GroupsState::new(&[g("g1"), g("g2")]).expect("a state");
        assert_eq!(state.check(), Ok(()));
        assert_eq!(state.slots.count(&g("g1")), 8192);
        let app1 = NodeId::new("app1").expect("a node");
        let record = NodeRecord::standby("http://127.0.0.1:8081".into(), 1);
        for group in ["g1", "g2"] {
            if let Some(s) = state.groups.get_mut(&g(group)) {
                s.nodes.insert(app1.clone(), record.clone());
            }
        }
        assert_eq!(
            state.check().map_err(|e| e.to_string()),
            Err("app1 is a node of both g1 and g2".to_owned())
        );
        if let Some(s) = state.groups.get_mut(&g("g2")) {
            s.nodes.clear();
        }
        assert_eq!(state.group_of(&app1), Some(&g("g1")));
        state.slots = state
            .slots
            .with_moved(&[keel_core::slots::Slot(3)], &g("g9"));
        assert_eq!(state.check(), Err(GroupsError::UnknownOwner(g("g9"))));
        assert_eq!(GroupsState::new(&[]), Err(GroupsError::NoGroups));
    }
}

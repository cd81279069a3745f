//! The cluster state: what the monitor keeps durably (`monitor.json`).
//!
//! Only what must survive a restart lives here: the epoch, the primary, each node's URL,
//! incarnation and sync flags, and the failover in progress. What nodes report in their
//! heartbeats (lsn, liveness) is soft state, rebuilt from the next heartbeats.

use std::collections::BTreeMap;

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

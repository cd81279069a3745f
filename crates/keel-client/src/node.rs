//! The nodes' answers that clients read (docs/api.md), written by the node with the same
//! types, so that both ends agree on every field.

use serde::{Deserialize, Serialize};

/// `GET /v1/counters/{name}` and `POST …/incr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The counter's name.
    pub name: String,
    /// Its value (0 when never incremented).
    pub value: i64,
}

/// One key of `GET /v1/kv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    /// The key.
    pub key: String,
    /// The log position of the write that last changed it.
    pub version: u64,
}

/// `GET /v1/kv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// Every key, sorted.
    pub keys: Vec<KeyVersion>,
}

/// The parts of a node's `GET /health` a client follows to find the primary without the
/// monitor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeHealth {
    /// The node's id.
    pub node: String,
    /// `primary` or `standby`.
    pub role: String,
    /// The primary a standby follows, when it knows it.
    #[serde(default)]
    pub primary: Option<String>,
    /// A primary's standbys.
    #[serde(default)]
    pub standbys: Vec<StandbyUrl>,
}

/// A standby in a primary's `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StandbyUrl {
    /// Its base URL.
    pub url: String,
}

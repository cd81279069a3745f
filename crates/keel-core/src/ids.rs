//! Identities and positions: the words of the data-tier protocol.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of a node (`app1`, `app2`, …): 1 to 64 ASCII letters, digits, `-` or `_`.
///
/// The restriction keeps ids safe to use in file names, header values and metric labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    /// The id was empty.
    #[error("a node id cannot be empty")]
    Empty,
    /// The id was longer than 64 bytes.
    #[error("node id {0:?} is longer than 64 characters")]
    TooLong(String),
    /// The id held a character other than ASCII letters, digits, `-` or `_`.
    #[error("node id {0:?} may only hold ASCII letters, digits, '-' and '_'")]
    BadChar(String),
}

impl NodeId {
    /// Checks and wraps a node id.
    pub fn new(id: impl Into<String>) -> Result<Self, NodeIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if id.len() > 64 {
            return Err(NodeIdError::TooLong(id));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(NodeIdError::BadChar(id));
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a node does in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Appends writes to the log and ships them to the standbys.
    Primary,
    /// Copies the primary's log; serves (possibly stale) reads, refuses writes.
    Standby,
}

impl Role {
    /// The lowercase name used on the wire and in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "primary" => Ok(Role::Primary),
            "standby" => Ok(Role::Standby),
            other => Err(format!(
                "unknown role {other:?}: expected 'primary' or 'standby'"
            )),
        }
    }
}

/// A term of office: grows by one at every change of primary and fences everything older.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

/// Epochs and log positions at or above this are refused wherever they arrive from the
/// wire: no real cluster comes near it (a failover a millisecond for a hundred million
/// years), and every `+ 1` below it has room.
pub const WIRE_LIMIT: u64 = 1 << 62;

impl Epoch {
    /// Whether this epoch may be taken from the wire ([`WIRE_LIMIT`]).
    pub fn in_range(self) -> bool {
        self.0 < WIRE_LIMIT
    }

    /// The epoch after this one; saturates rather than wrapping (it never gets there:
    /// epochs from the wire are checked against [`WIRE_LIMIT`]).
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Log sequence number: the position of an operation in the log, starting at 1.
///
/// `Lsn(0)` means "nothing yet".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position after this one; saturates rather than wrapping (positions from the
    /// wire are checked against [`WIRE_LIMIT`]).
    pub fn next(self) -> Lsn {
        Lsn(self.0.saturating_add(1))
    }

    /// Whether this position may be taken from the wire ([`WIRE_LIMIT`]).
    pub fn in_range(self) -> bool {
        self.0 < WIRE_LIMIT
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stamped log position. Two logs that hold the same `(epoch, lsn)` hold the same
/// operation there and agree on everything before it (Raft's log matching), because only
/// one primary ever writes in a given epoch.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPos {
    /// The epoch of the primary that wrote the operation.
    pub epoch: Epoch,
    /// Its position in the log.
    pub lsn: Lsn,
}

impl fmt::Display for LogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.lsn, self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(NodeId::new("app1").is_ok());
        assert!(NodeId::new("app_2-b").is_ok());
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert!(matches!(NodeId::new("a/b"), Err(NodeIdError::BadChar(_))));
        assert!(matches!(
            NodeId::new("x".repeat(65)),
            Err(NodeIdError::TooLong(_))
        ));
    }

    #[test]
    fn roles_round_trip_through_text() {
        for role in [Role::Primary, Role::Standby] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("leader".parse::<Role>().is_err());
    }
}

//! Commands, logged operations and their outcomes.

use std::collections::BTreeMap;

use keel_core::LogPos;
use serde::{Deserialize, Serialize};

/// A precondition on a key's version (`If-Match` / `If-None-Match: *`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// No precondition.
    Any,
    /// The key must exist at exactly this version.
    Version(u64),
    /// The key must not exist.
    Absent,
}

/// A write as a client asks for it. The primary checks its precondition against the
/// current state; only a command that passes becomes an [`Op`] in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Merge `key=value` pairs into the entries map.
    Merge(BTreeMap<String, String>),
    /// Set a key of the key/value space.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// The precondition.
        expect: Expect,
    },
    /// Remove a key of the key/value space.
    Delete {
        /// The key.
        key: String,
        /// The precondition.
        expect: Expect,
    },
    /// Add `by` to a counter (which starts at 0).
    Incr {
        /// The counter.
        name: String,
        /// The increment; may be negative.
        by: i64,
    },
}

/// An operation as the log keeps it: the effect of a command whose checks passed.
/// Applying it never fails, so every replica reaches the same state from the same log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Merge pairs into the entries map.
    Merge(BTreeMap<String, String>),
    /// Set a key; its version becomes the entry's lsn.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Set a counter to a value (the increment, resolved by the primary, so that applying
    /// it again on a replica cannot overflow differently).
    SetCounter {
        /// The counter.
        name: String,
        /// Its new value.
        value: i64,
    },
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Where it stands and which epoch wrote it.
    pub pos: LogPos,
    /// What it does.
    pub op: Op,
}

/// What an accepted command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The entries map was updated.
    Merged,
    /// The key now has this version.
    Put {
        /// The key's new version.
        version: u64,
    },
    /// The key was removed by the write at this version.
    Deleted {
        /// The lsn of the delete.
        version: u64,
    },
    /// The counter's new value.
    Counter {
        /// The value after the increment.
        value: i64,
    },
}

/// Why a command was not applied. Nothing was written for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// `If-Match` named another version, or `If-None-Match: *` found the key.
    #[error("the key is at version {current:?}, not the one the request expected")]
    VersionMismatch {
        /// The key's version now, `None` if it does not exist.
        current: Option<u64>,
    },
    /// A delete of a key that does not exist.
    #[error("no such key")]
    NotFound,
    /// The increment would take the counter outside the range of a 64-bit integer.
    #[error("counter {name} would overflow: {value} + {by}")]
    Overflow {
        /// The counter.
        name: String,
        /// Its value now.
        value: i64,
        /// The increment asked for.
        by: i64,
    },
}

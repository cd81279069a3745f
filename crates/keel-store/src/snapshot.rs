//! The whole state at one log position.

use std::collections::BTreeMap;

use keel_core::{Epoch, LogPos, Lsn};
use serde::{Deserialize, Serialize};

/// Everything a node needs to continue from `last` without the log before it: the state
/// machine as of `last` and the epoch boundaries up to it (for later log matching).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last log position the snapshot includes.
    pub last: LogPos,
    /// For each epoch up to `last.epoch`, the lsn of its first entry.
    pub epochs: Vec<(Epoch, Lsn)>,
    /// The entries map.
    pub entries: BTreeMap<String, String>,
    /// The key/value space: key, version, value.
    pub kv: Vec<(String, u64, Vec<u8>)>,
    /// The counters.
    pub counters: BTreeMap<String, i64>,
}

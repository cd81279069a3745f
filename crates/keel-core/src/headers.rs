//! The `Keel-*` headers: every answer of a node names who answered and where it stands.

/// The id of the node that answered.
pub const KEEL_NODE: &str = "keel-node";
/// Its role (`primary` or `standby`).
pub const KEEL_ROLE: &str = "keel-role";
/// The highest epoch it knows.
pub const KEEL_EPOCH: &str = "keel-epoch";
/// The last log position it holds (for a write: the position of that write).
pub const KEEL_LSN: &str = "keel-lsn";
/// On an answer that came through `keel proxy`: the name of the backend that answered.
pub const KEEL_BACKEND: &str = "keel-backend";
/// On a request to a data route of `keel proxy`: `stale` lets a standby answer a read.
pub const KEEL_READ: &str = "keel-read";

/// The version of the slot table a node answered by, when it holds one
/// (docs/shards.md): a client holding an older table knows to fetch the new one.
pub const KEEL_TABLE_VERSION: &str = "keel-table-version";

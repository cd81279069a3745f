//! Replication, primary to standby.
//!
//! The primary opens one stream per standby: an HTTP/1.1 `GET /v1/replication` upgraded
//! to `keel-replication/2`, so replication shares the node's one port and stays visible
//! to anything that speaks HTTP. After the upgrade both sides exchange length-delimited
//! [`frame`]s. The standby speaks first with its log position and epoch boundaries; the
//! primary finds where the logs agree ([`keel_store::agreement`]), has the standby roll
//! back anything after that point, or sends a snapshot when its own log no longer
//! reaches back, then streams entries. Every frame carries the sender's epoch, and a
//! standby refuses frames from an epoch older than one it has seen.

pub mod frame;
pub mod receiver;
pub mod sender;

/// The protocol name in the `Upgrade` header.
/// (Version 2: snapshots travel in parts and frames are capped at
/// [`frame::MAX_FRAME`]; a node of version 1 is refused at the upgrade.)
pub const PROTOCOL: &str = "keel-replication/2";
/// Header in which the primary sends the URL it can be reached at.
pub const PRIMARY_URL_HEADER: &str = "keel-primary-url";

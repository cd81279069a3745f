//! keel's data node: one member of a replicated group, primary or standby.
//!
//! - [`config`]: [`NodeConfig`], everything `keel node` is told on its command line;
//! - [`shared`]: the state the API, the writer and replication share — the store, the
//!   node's role, the end of the log and one [`shared::StandbyLink`] per standby;
//! - [`writer`]: the primary's write path: requests are queued, committed in groups (one
//!   fsync for many writes), then held until every sync standby has confirmed them;
//! - [`outbox`]: the newest entries in memory, which the senders ship while the writer is
//!   still making them durable;
//! - [`repl`]: replication — the frames ([`repl::frame`]), the primary's sender, one per
//!   standby ([`repl::sender`]), and the standby's receiver ([`repl::receiver`]);
//! - [`heartbeat`]: a monitored node's side of the monitor protocol: registration,
//!   heartbeats, promotion, stepping down, the sync set;
//! - [`api`]: the HTTP API of `docs/api.md` (axum);
//! - [`metrics`]: the Prometheus text of `/metrics`;
//! - [`update`]: the rules of an entries update (JSON, or the seed's `key=value` lines);
//! - [`node`]: [`run`], which opens the store, picks the epoch, starts all of the above
//!   and drains them when told to stop.
//!
//! Roles come from the command line here; the monitor that assigns them and fails over
//! automatically builds on this crate.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod heartbeat;
pub mod machine;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod repl;
pub mod shared;
pub mod update;
pub mod writer;

pub use config::NodeConfig;
pub use node::{NodeError, run};

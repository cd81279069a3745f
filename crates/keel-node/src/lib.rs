//! keel's data node: one member of a replicated group, primary or standby.
//!
//! - [`config`]: [`NodeConfig`], everything `keel node` is told on its command line;
//! - [`machine`]: every decision of the node, as a pure state machine — role, epochs,
//!   the lease, the standbys and the sync set, the batches waiting to commit or for their
//!   acks, which replication stream may write, promotion. Nothing else decides;
//! - [`shared`]: what the tasks below share — the store, the machine behind a lock, the
//!   queues — and [`shared::Shared::input`], the one place the machine's outputs are
//!   carried out;
//! - [`writer`]: the primary's write path: requests are queued, committed in groups (one
//!   fsync for many writes), then held until every sync standby has confirmed them;
//! - [`ticker`]: tells the machine when one of its deadlines has come;
//! - [`outbox`]: the newest entries in memory, which the senders ship while the writer is
//!   still making them durable;
//! - [`repl`]: replication — the frames ([`repl::frame`]), the primary's sender, one per
//!   standby ([`repl::sender`]), and the standby's receiver ([`repl::receiver`]);
//! - [`heartbeat`]: a monitored node's side of the monitor protocol: registration,
//!   heartbeats, and asking the monitor to drop a silent sync standby;
//! - [`api`]: the HTTP API of `docs/api.md` (axum);
//! - [`gate`]: the node's slot decisions under several groups, pure — which writes,
//!   imports and exports a slot may take now;
//! - [`moves`]: the node's half of a slot move between groups: export and import,
//!   piece by piece;
//! - [`metrics`]: the Prometheus text of `/metrics`;
//! - [`update`]: the rules of an entries update (JSON, or the seed's `key=value` lines);
//! - [`node`]: [`run`], which opens the store, picks the epoch, starts all of the above
//!   and drains them when told to stop.
//!
//! The drivers (writer, ticker, senders, receiver, heartbeat) do the I/O and report to the
//! machine; none of them imports another, and none is imported by [`shared`] or
//! [`machine`]. Roles come from the command line, or from the monitor (`keel-monitor`).
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod gate;
pub mod heartbeat;
pub mod machine;
pub mod metrics;
pub mod moves;
pub mod node;
pub mod outbox;
pub mod repl;
pub mod shared;
pub mod ticker;
pub mod update;
pub mod writer;

pub use config::NodeConfig;
pub use node::{NodeError, run};

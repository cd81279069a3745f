//! keel's monitor: the failure detector and failover coordinator of the data tier.
//!
//! Data nodes register with the monitor and heartbeat to it; the monitor decides who is
//! primary, renews the primary's write lease, keeps the sync set on the record, and when
//! the primary dies promotes the most up-to-date standby that is safe to promote. The
//! protocol is docs/failover.md.
//!
//! - [`wire`]: the JSON bodies of the protocol, from `keel-client`, which every client of
//!   the monitor shares;
//! - [`machine`]: [`Monitor`], the decisions — registration, heartbeats, failure
//!   detection, failover, switchover, the sync set — as a pure state machine; and
//!   `machine::groups`, several groups side by side with the slot table and the steps of
//!   a slot move (docs/shards.md);
//! - [`settings`]: [`Settings`], the timing the monitor runs on and hands to the nodes;
//! - [`state`]: [`ClusterState`], what the monitor keeps durably;
//! - [`store`]: `monitor.json`, written atomically and fsync'd (a monitor alone);
//! - [`file`]: `keel monitor --config monitor.toml`, the flags' options in a file;
//! - [`raft`]: three or five monitors replicating the cluster state with Raft (openraft):
//!   the log and state in redb, the calls between monitors, when a leader may renew
//!   leases;
//! - [`server`]: the HTTP API (axum);
//! - [`metrics`]: the Prometheus text of `/metrics`;
//! - [`runtime`]: [`run`], which loads the state, serves, drives the machine (ticks,
//!   probes, persistence — or, in a group, Raft commits, and the machine only while this
//!   monitor leads), copies the slots of a move between primaries piece by piece, and
//!   stops when told to.
//!
//! **Why the state machine is pure.** Failover is where a replicated system loses data
//! or ends up with two primaries, and its bugs hide in timing: a heartbeat that lands a
//! millisecond before a timeout, a lease that ends a millisecond after a promotion. So
//! the decisions take time as an argument ([`tokio::time::Instant`]) and return what to
//! do instead of doing it; they read no clock and touch no socket or file. Tests then pin
//! every transition exactly with constructed instants, and the runtime around it stays
//! small: carry out the outputs in order, making each persist durable before the answer
//! behind it goes out.
#![forbid(unsafe_code)]

pub mod file;
pub mod machine;
pub mod metrics;
pub mod raft;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod state;
pub mod store;

/// The wire types, which the monitor shares with its clients (`keel-client`).
pub use keel_client::wire;
pub use machine::Monitor;
pub use runtime::{MonitorConfig, MonitorError, RaftSetup, run};
pub use settings::Settings;
pub use state::ClusterState;

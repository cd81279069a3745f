//! Shared vocabulary of keel.
//!
//! Every crate of the workspace speaks in these terms, so they live in one place, and
//! with no web stack under them: the store builds on this crate alone. (Credentials on
//! the wire are `keel-auth`'s, serving `keel-http`'s.)
//!
//! - [`ids`]: [`NodeId`], [`Role`], [`Epoch`], [`Lsn`] and [`LogPos`] — who a node is, what
//!   it does, and where it stands in the replicated log;
//! - [`headers`]: the `Keel-*` response headers every node sets;
//! - [`duration`]: durations as flags and config files write them (`250ms`, `2s`);
//! - [`error`]: the JSON body of every 4xx/5xx answer ([`ApiError`]);
//! - [`token`]: the admin bearer token (loading it, comparing it in constant time);
//! - [`faults`]: the fault filter behind `keel chaos partition` — the peers this process
//!   must not connect to, read from `KEEL_FAULTS_FILE` (inert without it);
//! - [`shutdown`]: the Ctrl-C / SIGTERM future that servers take as their stop signal;
//! - [`slots`]: the key space in slots — a key's slot ([`slots::slot_of`], with `{tag}`
//!   hash tags), the versioned slot → group table ([`slots::SlotTable`]), moves and
//!   rebalance plans.
#![forbid(unsafe_code)]

pub mod duration;
pub mod error;
pub mod faults;
pub mod headers;
pub mod ids;
pub mod shutdown;
pub mod slots;
pub mod token;

pub use error::ApiError;
pub use ids::{Epoch, LogPos, Lsn, NodeId, NodeIdError, Role};

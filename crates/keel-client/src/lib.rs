//! The one typed client of keel's data tier: what the monitor and the nodes say on the
//! wire, and the knowledge every client of theirs needs — where the primary is, how to
//! follow it through a failover, what became of a write that was refused and whether it
//! may be sent again. The CLI, the proxy's cluster route, `keel load --verify`,
//! `keel service` and the write benchmark all go through here.
//!
//! - [`wire`]: the JSON bodies of the node ↔ monitor protocol and the monitor's views
//!   (docs/failover.md), shared with the monitor that answers them;
//! - [`monitor`]: reading the monitor from outside — its view (`GET /v1/cluster`) and
//!   its event stream (`GET /v1/events`), signed as a member when the reader is one;
//! - [`node`]: the nodes' answers clients read (counters, keys, a node's health);
//! - [`discovery`]: the primary in a view, or why there is none to send to now;
//! - [`waits`]: the backoff between tries, never shorter than `Retry-After`;
//! - [`outcome`]: [`Written`], what became of a refused write, the one way it travels,
//!   and [`Safety`], the rule for sending it again.
#![forbid(unsafe_code)]

pub mod discovery;
pub mod monitor;
pub mod node;
pub mod outcome;
pub mod waits;
pub mod wire;

pub use discovery::{Found, Target, primary_of};
pub use outcome::{Safety, Written};
pub use waits::Waits;

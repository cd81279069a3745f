//! Shared vocabulary of keel.
//!
//! Every crate of the workspace speaks in these terms, so they live in one place:
//!
//! - [`ids`]: [`NodeId`], [`Role`], [`Epoch`], [`Lsn`] and [`LogPos`] — who a node is, what
//!   it does, and where it stands in the replicated log;
//! - [`headers`]: the `Keel-*` response headers every node sets;
//! - [`duration`]: durations as flags and config files write them (`250ms`, `2s`);
//! - [`error`]: the JSON body of every 4xx/5xx answer ([`ApiError`]);
//! - [`http`]: what every keel server shares: the answers to a wrong route, method or
//!   body, the server loop with its limits and eviction ([`http::serve_with`]), and the
//!   check of credentials before any handler ([`http::Guard`]);
//! - [`token`]: the admin bearer token (loading it, comparing it in constant time);
//! - [`auth`]: the cluster secret, and signed requests and answers (`Keel-Auth`) with
//!   either credential — how members prove membership and operators their right to act;
//! - [`tls`]: TLS across hosts with rustls: a process's certificate, key and the cluster
//!   CA, for its listeners and its calls to members;
//! - [`faults`]: the fault filter behind `keel chaos partition` — the peers this process
//!   must not connect to, read from `KEEL_FAULTS_FILE` (inert without it);
//! - [`shutdown`]: the Ctrl-C / SIGTERM future that servers take as their stop signal.
#![forbid(unsafe_code)]

pub mod auth;
pub mod duration;
pub mod error;
pub mod faults;
pub mod headers;
pub mod http;
pub mod ids;
pub mod shutdown;
pub mod tls;
pub mod token;

pub use error::ApiError;
pub use ids::{Epoch, LogPos, Lsn, NodeId, NodeIdError, Role};

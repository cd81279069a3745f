//! What every keel HTTP server shares — the monitor, the nodes, `keel service`, the
//! proxy's admin API and `keel up`'s control API — so that each bounds its clients, checks
//! credentials and answers mistakes the same way.
//!
//! - [`serve`]: the server loop ([`serve_with`], [`serve_draining`]): header, body, send
//!   and idle limits, eviction at the connection cap (decided in `conns`, pure), TLS,
//!   draining on stop;
//! - [`guard`]: [`Guard`], the check of a request's credentials (a member's signature,
//!   an operator's token) before any handler, and the signature on answers to members;
//! - [`fallbacks`]: the JSON answers to a wrong route, a wrong method, a bad body;
//! - [`events`]: [`EventLog`] and [`event_stream`], for `GET /v1/events`.
#![forbid(unsafe_code)]

mod conns;
pub mod events;
pub mod fallbacks;
pub mod guard;
pub mod serve;

pub use events::{EventLog, event_stream, events_since};
pub use fallbacks::{
    body_rejection, error_response, json_fallbacks, method_not_allowed, not_found,
};
pub use guard::{Guard, MAX_SIGNED_BODY, SIGNED_BODY_TIMEOUT, guarded};
pub use serve::{Limits, TlsPeer, serve_draining, serve_with};

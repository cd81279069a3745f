//! keel's credentials on the wire: how a process proves what it is to another.
//!
//! - [`signature`] (its items re-exported here): the cluster secret ([`ClusterSecret`]),
//!   and signed requests and answers (`Keel-Auth`) with either credential — the secret,
//!   for members ([`Signer`], [`Verifier`]), or the admin token, for operators. Pure:
//!   time and nonces are passed in.
//! - [`tls`]: TLS across hosts with rustls: a process's certificate, key and the cluster
//!   CA, for its listeners and its calls to members ([`tls::Tls`]);
//! - [`certs`]: the small CA and the per-process certificates they are made from
//!   (`keel certs`, `keel up --tls`).
//!
//! The admin token itself ([`keel_core::token`]) is vocabulary every process reads; what
//! is here is what turns it, and the secret, into something a wire can carry without
//! giving it away. Servers check both through `keel-http`'s guard; clients sign with
//! [`Signer`]. docs/security.md has the design.
#![forbid(unsafe_code)]

pub mod certs;
pub mod signature;
pub mod tls;

pub use signature::*;

//! TCP pools in front of PostgreSQL (`keel proxy --tcp`): a read-write port to the
//! primary and a read-only port over the standbys, chosen by checks that speak
//! PostgreSQL.
//!
//! - [`pools`]: which server may take a connection on which port, and what a change of
//!   role or lag means for the sessions already open — pure, fed by the checks;
//! - [`check`]: one check of a server: log in, `pg_is_in_recovery()` and the replay lag.

pub mod check;
pub mod pools;

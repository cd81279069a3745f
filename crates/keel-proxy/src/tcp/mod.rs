//! TCP pools in front of PostgreSQL (`keel proxy --tcp`): a read-write port to the
//! primary and a read-only port over the standbys, chosen by checks that speak
//! PostgreSQL.
//!
//! - [`pools`]: which server may take a connection on which port, and what a change of
//!   role or lag means for the sessions already open — pure, fed by the checks;
//! - [`check`]: one check of a server: log in, `pg_is_in_recovery()` and the replay lag;
//! - [`config`]: a `[[tcp]]` section, checked with the rest of the file;
//! - [`serve`]: the listeners, the relay of each session and the check loops — the
//!   driver of [`pools`].

pub mod check;
pub mod config;
pub mod pools;
pub mod serve;

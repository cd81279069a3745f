//! keel's durable store: an operation log stamped `(epoch, lsn)` and the state machine it
//! drives, both kept in one [redb] database so that a log entry and its effect are always
//! committed together.
//!
//! - [`op`]: what a client asks for ([`Command`], with preconditions), what the log keeps
//!   ([`Op`], the effect, replayable without checks), and what it answered ([`Outcome`]);
//! - [`store`]: [`Store`], the database: group-committed appends on the primary,
//!   contiguous appends on a standby, reads, rollback of a divergent suffix, snapshots and
//!   log truncation;
//! - [`matching`]: where two logs stop agreeing, from their epoch boundaries (Raft's log
//!   matching), so a standby that rejoins knows what to keep;
//! - [`snapshot`]: the whole state at one log position, for a standby the log no longer
//!   reaches.
//!
//! The state machine is the seed's *entries* map (`key=value` updates), a key/value space
//! where each key carries a version (the lsn of the write that last changed it), and
//! counters. Every replica applies an entry the moment it makes it durable; that is what
//! lets a standby answer a read of a write before the primary has acknowledged it. Each
//! applied entry leaves an *undo* record beside it, local to the node, so a suffix that a
//! deposed primary wrote but never had acknowledged can be rolled back exactly.
#![forbid(unsafe_code)]

pub mod matching;
pub mod op;
pub mod snapshot;
pub mod store;

pub use matching::agreement;
pub use op::{Command, Expect, LogEntry, Op, Outcome, Rejection};
pub use snapshot::{Snapshot, SnapshotBuilder, SnapshotPart};
pub use store::{Applied, LogStatus, Store, StoreError};

//! keel's store: an operation log stamped `(epoch, lsn)` and the state machine it drives,
//! behind one contract ([`Storage`]) with three implementations — [`Store`], one [redb]
//! database where a log entry and its effect are always committed together; [`LogStore`],
//! the state in memory made durable by one append-only file, a commit being one append
//! and one `fdatasync`; and [`MemStore`], in memory, which a deterministic simulator can
//! crash between a mutation and its sync.
//!
//! The public parts:
//!
//! - [`storage`]: the [`Storage`] trait and its contract — what each call does and what
//!   survives a crash — with [`LogStatus`] and [`Applied`];
//! - [`store`]: [`Store`], the redb database the node runs on by default;
//! - [`log_store`]: [`LogStore`], the append-only file (`keel node --store log`), its
//!   frames, replay and compaction;
//! - [`mem_store`]: [`MemStore`] and its [`SyncMode`], `sync` and `crash`;
//! - [`op`]: what a client asks for ([`Command`], with preconditions), what the log keeps
//!   ([`Op`], the effect, replayable without checks), and what it answered ([`Outcome`]);
//! - [`error`]: [`StoreError`], what a call refuses or fails with;
//! - [`matching`]: where two logs stop agreeing, from their epoch boundaries (Raft's log
//!   matching), so a standby that rejoins knows what to keep;
//! - [`snapshot`]: the whole state at one log position, for a standby the log no longer
//!   reaches.
//!
//! Inside, the rules exist once: `rules` holds preconditions, apply and undo, appends,
//! compaction, rollback, install and snapshots, written against two small traits in
//! `tables` — `Tables` (what one mutation reads and writes) and `View` (one consistent
//! read). `redb_tables` implements them over redb transactions and `mem_tables` over
//! BTreeMaps with a journal that a crash unwinds (which [`LogStore`] uses too, recording
//! what each mutation sets). `backend` implements [`Storage`] once for every store, each
//! of which supplies only "run this mutation atomically" and "read one view".
//!
//! The state machine is the seed's *entries* map (`key=value` updates), a key/value space
//! where each key carries a version (the lsn of the write that last changed it), and
//! counters. Every replica applies an entry the moment it makes it durable; that is what
//! lets a standby answer a read of a write before the primary has acknowledged it. Each
//! applied entry leaves an *undo* record beside it, local to the node, so a suffix that a
//! deposed primary wrote but never had acknowledged can be rolled back exactly.
#![forbid(unsafe_code)]

mod backend;
pub mod error;
pub mod log_store;
pub mod matching;
pub mod mem_store;
mod mem_tables;
pub mod op;
mod redb_tables;
mod rules;
pub mod snapshot;
pub mod storage;
pub mod store;
mod tables;

pub use error::StoreError;
pub use log_store::LogStore;
pub use matching::agreement;
pub use mem_store::{MemStore, SyncMode};
pub use op::{Command, Expect, LogEntry, Op, Outcome, Rejection};
pub use snapshot::{Snapshot, SnapshotBuilder, SnapshotPart};
pub use storage::{Applied, LogStatus, Storage};
pub use store::Store;

//! The rules of the log and the state machine, written once over [`Tables`] and [`View`]
//! for every store: preconditions, apply and undo, appends, compaction, rollback,
//! snapshots.
//!
//! A mutation here decides everything that can refuse it (a stale epoch, a gap, a
//! rollback into the snapshot) before it writes a table, so a refusal leaves nothing
//! behind; it returns a [`Written`], which tells the store whether there is anything to
//! commit and where the log stands after it.

use keel_core::{Epoch, LogPos, Lsn};

use crate::error::StoreError;
use crate::op::{Command, Expect, LogEntry, Op, Outcome, Rejection};
use crate::snapshot::Snapshot;
use crate::storage::{Applied, LogStatus};
use crate::tables::{Tables, Undo, View, decode_kv, encode_kv};

/// What a mutation did.
#[derive(Debug)]
pub(crate) enum Written<R> {
    /// Nothing was written: there is nothing to commit.
    Nothing(R),
    /// Tables were written, and the log now stands at this status: commit.
    Changed(LogStatus, R),
}

/// Refuses an epoch older than the newest seen, or out of range.
fn check_epoch(status: LogStatus, epoch: Epoch) -> Result<(), StoreError> {
    if !epoch.in_range() {
        return Err(StoreError::EpochOutOfRange { given: epoch });
    }
    if epoch < status.epoch {
        return Err(StoreError::StaleEpoch {
            given: epoch,
            current: status.epoch,
        });
    }
    Ok(())
}

/// Records `epoch` as seen; whether it was new.
pub(crate) fn observe_epoch(status: LogStatus, epoch: Epoch) -> Result<Written<bool>, StoreError> {
    check_epoch(status, epoch)?;
    if epoch == status.epoch {
        return Ok(Written::Nothing(false));
    }
    Ok(Written::Changed(LogStatus { epoch, ..status }, true))
}

/// The primary's group commit (see [`Storage::execute_with`](crate::Storage::execute_with)).
pub(crate) fn execute(
    t: &mut dyn Tables,
    status: LogStatus,
    epoch: Epoch,
    commands: &[Command],
    retain: u64,
    before_commit: &mut dyn FnMut(&[LogEntry]),
) -> Result<Written<Vec<Applied>>, StoreError> {
    check_epoch(status, epoch)?;
    let mut next = LogStatus { epoch, ..status };
    let mut results = Vec::with_capacity(commands.len());
    let mut entries = Vec::with_capacity(commands.len());
    for command in commands {
        let op = match check(t, command)? {
            Ok(op) => op,
            Err(rejection) => {
                results.push(Err(rejection));
                continue;
            }
        };
        let lsn = next.last.lsn.next();
        let entry = LogEntry {
            pos: LogPos { epoch, lsn },
            op,
        };
        push(t, &mut next, &entry)?;
        results.push(Ok((lsn, outcome(lsn, &entry.op))));
        entries.push(entry);
    }
    if entries.is_empty() && next == status {
        // Every command was refused: not even an fsync for them.
        return Ok(Written::Nothing(results));
    }
    compact(t, &mut next, retain)?;
    if !entries.is_empty() {
        before_commit(&entries);
    }
    Ok(Written::Changed(next, results))
}

/// A standby's append of entries that must continue the log; the new last position.
pub(crate) fn append(
    t: &mut dyn Tables,
    status: LogStatus,
    entries: &[LogEntry],
    retain: u64,
) -> Result<Written<LogPos>, StoreError> {
    if entries.is_empty() {
        return Ok(Written::Nothing(status.last));
    }
    check_contiguous(status.last, entries)?;
    let mut next = status;
    for entry in entries {
        push(t, &mut next, entry)?;
    }
    compact(t, &mut next, retain)?;
    Ok(Written::Changed(next, next.last))
}

/// Refuses entries that do not follow `last` one by one, with epochs that never go
/// back, or that stand beyond what the wire may carry.
fn check_contiguous(mut last: LogPos, entries: &[LogEntry]) -> Result<(), StoreError> {
    for entry in entries {
        let in_range = entry.pos.lsn.in_range() && entry.pos.epoch.in_range();
        if !in_range || entry.pos.lsn != last.lsn.next() || entry.pos.epoch < last.epoch {
            return Err(StoreError::Gap {
                last,
                next: entry.pos,
            });
        }
        last = entry.pos;
    }
    Ok(())
}

/// Takes back every entry after `lsn`; the new last position.
pub(crate) fn rollback_to(
    t: &mut dyn Tables,
    status: LogStatus,
    lsn: Lsn,
) -> Result<Written<LogPos>, StoreError> {
    if lsn >= status.last.lsn {
        return Ok(Written::Nothing(status.last));
    }
    if lsn < status.snapshot.lsn {
        return Err(StoreError::Compacted {
            snapshot: status.snapshot,
        });
    }
    for l in (lsn.0 + 1..=status.last.lsn.0).rev() {
        if let Some(undo) = t.pop_log(Lsn(l))? {
            unapply(t, undo)?;
        }
    }
    t.forget_epochs_after(lsn)?;
    let epoch = if lsn == status.snapshot.lsn {
        status.snapshot.epoch
    } else {
        t.epoch_at(lsn)?.unwrap_or(Epoch(0))
    };
    let next = LogStatus {
        last: LogPos { epoch, lsn },
        ..status
    };
    Ok(Written::Changed(next, next.last))
}

/// Replaces everything with a snapshot; the new last position.
pub(crate) fn install(
    t: &mut dyn Tables,
    status: LogStatus,
    snap: &Snapshot,
) -> Result<Written<LogPos>, StoreError> {
    t.clear()?;
    for &(epoch, first) in &snap.epochs {
        t.add_epoch(epoch, first)?;
    }
    for (k, v) in &snap.entries {
        t.set_entry(k, Some(v))?;
    }
    for (k, version, value) in &snap.kv {
        t.set_kv(k, Some((*version, value)))?;
    }
    for (k, v) in &snap.counters {
        t.set_counter(k, Some(*v))?;
    }
    let next = LogStatus {
        epoch: status.epoch.max(snap.last.epoch),
        last: snap.last,
        snapshot: snap.last,
    };
    Ok(Written::Changed(next, next.last))
}

/// Sets a number the node keeps about itself.
pub(crate) fn set_node_meta(
    t: &mut dyn Tables,
    status: LogStatus,
    key: &str,
    value: u64,
) -> Result<Written<()>, StoreError> {
    t.set_node_meta(key, value)?;
    Ok(Written::Changed(status, ()))
}

/// Up to `max` entries after `after`, or [`StoreError::Compacted`].
pub(crate) fn entries_after(
    v: &dyn View,
    after: Lsn,
    max: usize,
) -> Result<Vec<LogEntry>, StoreError> {
    // The status and the log come from the same view, so a compaction cannot slip
    // between the check and the read.
    let snapshot = v.status()?.snapshot;
    if after < snapshot.lsn {
        return Err(StoreError::Compacted { snapshot });
    }
    v.log_after(after, max)
}

/// The last position and the epoch boundaries.
pub(crate) fn summary(v: &dyn View) -> Result<(LogPos, Vec<(Epoch, Lsn)>), StoreError> {
    Ok((v.status()?.last, v.epochs()?))
}

/// The whole state at the last position.
pub(crate) fn snapshot(v: &dyn View) -> Result<Snapshot, StoreError> {
    let (last, epochs) = summary(v)?;
    Ok(Snapshot {
        last,
        epochs,
        entries: v.entries()?,
        kv: v.kv_all()?,
        counters: v.counters()?,
    })
}

/// Turns a command into the operation to log, or says why it cannot be applied.
fn check(t: &dyn Tables, command: &Command) -> Result<Result<Op, Rejection>, StoreError> {
    let expect_ok = |expect: Expect, current: Option<u64>| match expect {
        Expect::Any => true,
        Expect::Version(v) => current == Some(v),
        Expect::Absent => current.is_none(),
    };
    Ok(match command {
        Command::Merge(pairs) => Ok(Op::Merge(pairs.clone())),
        Command::Put { key, value, expect } => {
            let current = t.kv_version(key)?;
            if expect_ok(*expect, current) {
                Ok(Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                })
            } else {
                Err(Rejection::VersionMismatch { current })
            }
        }
        Command::Delete { key, expect } => match t.kv_version(key)? {
            None => Err(Rejection::NotFound),
            Some(v) if expect_ok(*expect, Some(v)) => Ok(Op::Delete { key: key.clone() }),
            current => Err(Rejection::VersionMismatch { current }),
        },
        Command::Incr { name, by } => {
            let value = t.counter_value(name)?.unwrap_or(0);
            match value.checked_add(*by) {
                Some(value) => Ok(Op::SetCounter {
                    name: name.clone(),
                    value,
                }),
                None => Err(Rejection::Overflow {
                    name: name.clone(),
                    value,
                    by: *by,
                }),
            }
        }
    })
}

fn outcome(lsn: Lsn, op: &Op) -> Outcome {
    match op {
        Op::Merge(_) => Outcome::Merged,
        Op::Put { .. } => Outcome::Put { version: lsn.0 },
        Op::Delete { .. } => Outcome::Deleted { version: lsn.0 },
        Op::SetCounter { value, .. } => Outcome::Counter { value: *value },
    }
}

/// Appends an entry that directly follows `status.last`, applies it, and moves `status`
/// on.
fn push(t: &mut dyn Tables, status: &mut LogStatus, entry: &LogEntry) -> Result<(), StoreError> {
    let LogPos { epoch, lsn } = entry.pos;
    let undo = apply(t, lsn, &entry.op)?;
    t.push_log(entry, undo)?;
    t.add_epoch(epoch, lsn)?;
    status.last = entry.pos;
    status.epoch = status.epoch.max(epoch);
    Ok(())
}

/// Applies an operation written at `lsn` and returns how to take it back.
fn apply(t: &mut dyn Tables, lsn: Lsn, op: &Op) -> Result<Undo, StoreError> {
    let kv_before =
        |old: Option<(u64, Vec<u8>)>| old.map(|(version, value)| encode_kv(version, &value));
    Ok(match op {
        Op::Merge(pairs) => {
            let mut before = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                before.push((k.clone(), t.set_entry(k, Some(v))?));
            }
            Undo::Entries(before)
        }
        Op::Put { key, value } => Undo::Kv {
            key: key.clone(),
            before: kv_before(t.set_kv(key, Some((lsn.0, value)))?),
        },
        Op::Delete { key } => Undo::Kv {
            key: key.clone(),
            before: kv_before(t.set_kv(key, None)?),
        },
        Op::SetCounter { name, value } => Undo::Counter {
            name: name.clone(),
            before: t.set_counter(name, Some(*value))?,
        },
    })
}

/// Takes back what [`apply`] did.
fn unapply(t: &mut dyn Tables, undo: Undo) -> Result<(), StoreError> {
    match undo {
        Undo::Entries(before) => {
            // The mirror of `apply`: the last key set is the first restored.
            for (k, old) in before.into_iter().rev() {
                t.set_entry(&k, old.as_deref())?;
            }
        }
        Undo::Kv { key, before } => {
            t.set_kv(&key, before.as_deref().map(decode_kv))?;
        }
        Undo::Counter { name, before } => {
            t.set_counter(&name, before)?;
        }
    }
    Ok(())
}

/// Folds the oldest entries into the snapshot so that at most `retain` stay in the log.
/// The state tables already hold their effect; only the entries and their undo records
/// go.
fn compact(t: &mut dyn Tables, status: &mut LogStatus, retain: u64) -> Result<(), StoreError> {
    let held = status.last.lsn.0 - status.snapshot.lsn.0;
    // Compact in steps of an eighth of the window, so the cost is paid now and then
    // rather than on every write.
    if held <= retain + retain / 8 {
        return Ok(());
    }
    let cut = Lsn(status.last.lsn.0 - retain);
    let epoch = t.epoch_at(cut)?.unwrap_or(status.snapshot.epoch);
    t.truncate_log_through(cut)?;
    status.snapshot = LogPos { epoch, lsn: cut };
    Ok(())
}

//! The newest log entries, kept in memory for the senders.
//!
//! The primary ships a batch while it is still making it durable itself, so the batch is
//! not in the store yet when the senders need it: they take it from here. Older entries,
//! which a standby that fell behind may need, come from the store, where everything that
//! has left the outbox is already committed (the writer commits one batch at a time, and
//! the outbox always keeps at least the newest).

use std::collections::VecDeque;

use keel_core::Lsn;
use keel_store::{LogEntry, Op};

/// Entries kept at most.
const MAX_ENTRIES: usize = 16 * 1024;
/// Bytes of keys and values kept at most (roughly).
const MAX_BYTES: usize = 64 << 20;

/// Recent entries, contiguous and in order.
#[derive(Default)]
pub struct Outbox {
    entries: VecDeque<LogEntry>,
    bytes: usize,
}

/// Roughly how many bytes an entry holds (keys, values and a fixed overhead).
pub fn weight(entry: &LogEntry) -> usize {
    64 + match &entry.op {
        Op::Merge(pairs) => pairs.iter().map(|(k, v)| k.len() + v.len()).sum(),
        Op::Put { key, value } => key.len() + value.len(),
        Op::Delete { key } => key.len(),
        Op::SetCounter { name, .. } => name.len(),
    }
}

impl Outbox {
    /// Adds a batch that continues the entries held (or starts afresh if it does not),
    /// then drops the oldest entries beyond the limits, never the batch just added.
    pub fn push(&mut self, batch: &[LogEntry]) {
        let continues = match (self.entries.back(), batch.first()) {
            (Some(last), Some(first)) => first.pos.lsn == last.pos.lsn.next(),
            _ => true,
        };
        if !continues {
            self.entries.clear();
            self.bytes = 0;
        }
        for entry in batch {
            self.bytes += weight(entry);
            self.entries.push_back(entry.clone());
        }
        while self.entries.len() > batch.len().max(MAX_ENTRIES) || self.bytes > MAX_BYTES {
            if self.entries.len() <= batch.len() {
                break;
            }
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= weight(&old);
            }
        }
    }

    /// Up to `max` entries after `after`, if the outbox still holds the one right after
    /// it; `None` means "read them from the store".
    pub fn after(&self, after: Lsn, max: usize) -> Option<Vec<LogEntry>> {
        let first = self.entries.front()?.pos.lsn;
        if first > after.next() {
            return None;
        }
        let skip = usize::try_from(after.next().0 - first.0).ok()?;
        Some(self.entries.iter().skip(skip).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use keel_core::{Epoch, LogPos};

    use super::*;

    fn entry(lsn: u64) -> LogEntry {
        LogEntry {
            pos: LogPos {
                epoch: Epoch(1),
                lsn: Lsn(lsn),
            },
            op: Op::Delete { key: "k".into() },
        }
    }

    fn lsns(v: Option<Vec<LogEntry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.pos.lsn.0).collect())
    }

    #[test]
    fn serves_what_it_holds_and_sends_older_reads_to_the_store() {
        let mut out = Outbox::default();
        assert_eq!(lsns(out.after(Lsn(0), 10)), None);
        out.push(&[entry(5), entry(6), entry(7)]);
        assert_eq!(lsns(out.after(Lsn(4), 10)), Some(vec![5, 6, 7]));
        assert_eq!(lsns(out.after(Lsn(5), 1)), Some(vec![6]));
        assert_eq!(lsns(out.after(Lsn(7), 10)), Some(vec![]));
        assert_eq!(
            lsns(out.after(Lsn(3), 10)),
            None,
            "lsn 4 is only in the store"
        );
    }

    #[test]
    fn keeps_at_most_the_limit_but_always_the_newest_batch() {
        let mut out = Outbox::default();
        let big: Vec<LogEntry> = (1..=(MAX_ENTRIES as u64 + 10)).map(entry).collect();
        out.push(&big);
        assert_eq!(out.entries.len(), big.len(), "the newest batch stays whole");
        out.push(&[entry(MAX_ENTRIES as u64 + 11)]);
        assert_eq!(out.entries.len(), MAX_ENTRIES);
        assert_eq!(
            out.entries.back().map(|e| e.pos.lsn),
            Some(Lsn(MAX_ENTRIES as u64 + 11))
        );
    }

    #[test]
    fn a_batch_that_does_not_continue_replaces_everything() {
        let mut out = Outbox::default();
        out.push(&[entry(1), entry(2)]);
        out.push(&[entry(10)]);
        assert_eq!(lsns(out.after(Lsn(9), 10)), Some(vec![10]));
        assert_eq!(lsns(out.after(Lsn(1), 10)), None);
    }
}

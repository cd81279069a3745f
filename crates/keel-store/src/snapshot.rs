//! The whole state at one log position.

use std::collections::BTreeMap;

use keel_core::{Epoch, LogPos, Lsn};
use serde::{Deserialize, Serialize};

/// Everything a node needs to continue from `last` without the log before it: the state
/// machine as of `last` and the epoch boundaries up to it (for later log matching).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last log position the snapshot includes.
    pub last: LogPos,
    /// For each epoch up to `last.epoch`, the lsn of its first entry.
    pub epochs: Vec<(Epoch, Lsn)>,
    /// The entries map.
    pub entries: BTreeMap<String, String>,
    /// The key/value space: key, version, value.
    pub kv: Vec<(String, u64, Vec<u8>)>,
    /// The counters.
    pub counters: BTreeMap<String, i64>,
}

/// A piece of a [`Snapshot`] small enough for one replication frame. Every part names
/// the position it belongs to, so that pieces of two snapshots are never mixed; the first
/// also carries the epoch boundaries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    /// The snapshot's last log position.
    pub last: LogPos,
    /// The epoch boundaries (first part only).
    pub epochs: Vec<(Epoch, Lsn)>,
    /// Some of the entries map.
    pub entries: Vec<(String, String)>,
    /// Some of the key/value space.
    pub kv: Vec<(String, u64, Vec<u8>)>,
    /// Some of the counters.
    pub counters: Vec<(String, i64)>,
}

/// What an item weighs in a part: its bytes and a margin for the encoding.
fn weight(key: &str, value: usize) -> usize {
    16 + key.len() + value
}

impl Snapshot {
    /// Cuts the snapshot into parts of at most `max_bytes` of keys and values each (one
    /// item larger than that goes alone). There is always at least one part.
    pub fn into_parts(self, max_bytes: usize) -> Vec<SnapshotPart> {
        let last = self.last;
        let mut parts = vec![SnapshotPart {
            last,
            epochs: self.epochs,
            ..SnapshotPart::default()
        }];
        let mut size = 0;
        // Starts a new part when `w` more would overflow one that already holds something.
        let mut room = |parts: &mut Vec<SnapshotPart>, w: usize| {
            if size > 0 && size + w > max_bytes {
                parts.push(SnapshotPart {
                    last,
                    ..SnapshotPart::default()
                });
                size = 0;
            }
            size += w;
        };
        for (k, v) in self.entries {
            room(&mut parts, weight(&k, v.len()));
            if let Some(p) = parts.last_mut() {
                p.entries.push((k, v));
            }
        }
        for (k, version, value) in self.kv {
            room(&mut parts, weight(&k, value.len()));
            if let Some(p) = parts.last_mut() {
                p.kv.push((k, version, value));
            }
        }
        for (k, v) in self.counters {
            room(&mut parts, weight(&k, 8));
            if let Some(p) = parts.last_mut() {
                p.counters.push((k, v));
            }
        }
        parts
    }
}

/// Puts a snapshot back together from its parts, in order.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    snapshot: Option<Snapshot>,
}

impl SnapshotBuilder {
    /// Adds the next part; a part of another snapshot than the first one's is refused.
    pub fn add(&mut self, part: SnapshotPart) -> Result<(), String> {
        let snapshot = match &mut self.snapshot {
            Some(s) if s.last != part.last => {
                return Err(format!(
                    "a part of the snapshot at {} arrived while the one at {} was being sent",
                    part.last, s.last
                ));
            }
            Some(s) => s,
            None => self.snapshot.insert(Snapshot {
                last: part.last,
                ..Snapshot::default()
            }),
        };
        snapshot.epochs.extend(part.epochs);
        snapshot.entries.extend(part.entries);
        snapshot.kv.extend(part.kv);
        snapshot.counters.extend(part.counters);
        Ok(())
    }

    /// The snapshot of every part added.
    pub fn finish(self) -> Snapshot {
        self.snapshot.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            last: LogPos {
                epoch: Epoch(3),
                lsn: Lsn(40),
            },
            epochs: vec![(Epoch(1), Lsn(1)), (Epoch(3), Lsn(20))],
            entries: (0..10)
                .map(|i| (format!("e{i}"), "v".repeat(100)))
                .collect(),
            kv: (0..10)
                .map(|i| (format!("k{i}"), i, vec![b'x'; 1000]))
                .collect(),
            counters: (0..10).map(|i| (format!("c{i}"), i)).collect(),
        }
    }

    #[test]
    fn a_snapshot_cut_into_parts_comes_back_whole() {
        let whole = sample();
        let parts = whole.clone().into_parts(2048);
        assert!(parts.len() > 4, "{} parts", parts.len());
        for part in &parts {
            let size: usize = part
                .entries
                .iter()
                .map(|(k, v)| weight(k, v.len()))
                .sum::<usize>()
                + part
                    .kv
                    .iter()
                    .map(|(k, _, v)| weight(k, v.len()))
                    .sum::<usize>()
                + part
                    .counters
                    .iter()
                    .map(|(k, _)| weight(k, 8))
                    .sum::<usize>();
            assert!(size <= 2048, "a part of {size} bytes");
            assert_eq!(part.last, whole.last);
        }
        assert_eq!(parts[0].epochs, whole.epochs);
        assert!(parts[1..].iter().all(|p| p.epochs.is_empty()));
        let mut builder = SnapshotBuilder::default();
        for part in parts {
            builder.add(part).expect("same snapshot");
        }
        assert_eq!(builder.finish(), whole);
    }

    #[test]
    fn an_item_larger_than_a_part_goes_alone_and_an_empty_snapshot_is_one_part() {
        let big = Snapshot {
            kv: vec![
                ("a".into(), 1, vec![0; 10]),
                ("b".into(), 2, vec![0; 5000]),
                ("c".into(), 3, vec![0; 10]),
            ],
            ..Snapshot::default()
        };
        let parts = big.into_parts(1024);
        let sizes: Vec<usize> = parts.iter().map(|p| p.kv.len()).collect();
        assert_eq!(sizes, [1, 1, 1]);
        assert_eq!(Snapshot::default().into_parts(1024).len(), 1);
    }

    #[test]
    fn parts_of_two_snapshots_are_never_mixed() {
        let mut builder = SnapshotBuilder::default();
        let mut parts = sample().into_parts(2048);
        builder.add(parts.remove(0)).expect("first");
        let other = SnapshotPart {
            last: LogPos {
                epoch: Epoch(4),
                lsn: Lsn(50),
            },
            ..SnapshotPart::default()
        };
        assert!(builder.add(other).is_err());
    }
}

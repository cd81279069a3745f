//! The node's slot decisions under several groups (docs/shards.md), as a pure state: the
//! node's group, the slot table it holds, and the writes and imports under way on each
//! slot. Nothing here locks, waits or reads a clock: [`crate::shared::Shared`] keeps a
//! [`SlotGate`] behind one lock and does the waiting (a write held by a move, an export
//! waiting for writes to end), so every rule below is tested exactly.
//!
//! - A write is granted when the node's group owns the key's slot, no move freezes the
//!   slot (at its owner and at the group it goes to alike) and no import fills it.
//! - An import is granted only while the table held has that very move under way to this
//!   node's group, so a late copy can never overwrite a newer write.
//! - An export may read a frozen move's slots once no write granted before the freeze is
//!   still under way.
//! - A read of a slot in the move under way, out of this node's group or into it, waits
//!   for the move to end: the source cannot know the moment the switch commits (after
//!   which the target takes writes), and the target owns the slot only from then.
//! - A node that holds no table (one group) owns every key.

use std::collections::HashMap;

use keel_core::slots::{GroupId, Misdirected, Moving, SlotTable, slot_of};

/// Why a write to a key cannot start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unclaimed {
    /// Another group owns the key's slot.
    Misdirected(Misdirected),
    /// The slot is frozen by a move (`to` the group it goes to), or being imported here.
    Frozen { slot: u16, to: Option<GroupId> },
}

/// A write or an import granted on some slots: what [`SlotGate::release`] gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The slots it holds (none when the node holds no table).
    pub slots: Vec<u16>,
    /// An import's hold, rather than a write's.
    pub import: bool,
    /// The table version it was granted under (0: no table).
    pub version: u64,
}

/// The node's group, its slot table and the work under way on slots.
#[derive(Debug, Default)]
pub struct SlotGate {
    held: Option<(GroupId, SlotTable)>,
    writing: HashMap<u16, usize>,
    importing: HashMap<u16, usize>,
}

impl SlotGate {
    /// Takes `table` as the node's in `group` when it is newer than the one held (views
    /// may cross on their way); returns its version when it was taken.
    pub fn learn(&mut self, group: &GroupId, table: Option<&SlotTable>) -> Option<u64> {
        let table = table?;
        let newer = self
            .held
            .as_ref()
            .is_none_or(|(_, mine)| table.version() > mine.version());
        newer.then(|| {
            self.held = Some((group.clone(), table.clone()));
            table.version()
        })
    }

    /// Grants a write to `key`, or says why not.
    pub fn claim(&mut self, key: &[u8]) -> Result<Granted, Unclaimed> {
        let Some((mine, table)) = self.held.as_ref() else {
            return Ok(Granted {
                slots: Vec::new(),
                import: false,
                version: 0,
            });
        };
        let slot = slot_of(key);
        // A frozen slot waits, here at its owner and at the group it goes to alike: the
        // move ends soon, and the write is then taken or sent on (421) to the new owner.
        if let Some(m) = table.moving().filter(|m| m.has(slot))
            && (&m.from == mine || &m.to == mine)
        {
            return Err(Unclaimed::Frozen {
                slot: slot.0,
                to: Some(m.to.clone()),
            });
        }
        if let Some(m) = table.misdirected(key, mine) {
            return Err(Unclaimed::Misdirected(m));
        }
        if self.importing.contains_key(&slot.0) {
            return Err(Unclaimed::Frozen {
                slot: slot.0,
                to: None,
            });
        }
        *self.writing.entry(slot.0).or_default() += 1;
        Ok(Granted {
            slots: vec![slot.0],
            import: false,
            version: table.version(),
        })
    }

    /// Grants an import of the move frozen at version `since`: only while the table held
    /// has that move under way to this node's group (a late import, after the switch,
    /// would overwrite the slots' new writes). Writes to the slots are refused while it
    /// is held.
    pub fn claim_import(&mut self, since: u64) -> Result<(Granted, Moving), String> {
        let Some((mine, table)) = self.held.as_ref() else {
            return Err("this node belongs to no group".to_owned());
        };
        let Some(m) = table.moving().filter(|m| m.since == since && &m.to == mine) else {
            return Err(format!(
                "this node ({mine}) holds table version {}, which has no move to {mine} frozen at version {since}",
                table.version()
            ));
        };
        let m = m.clone();
        let version = table.version();
        for slot in &m.slots {
            *self.importing.entry(slot.0).or_default() += 1;
        }
        let granted = Granted {
            slots: m.slots.iter().map(|s| s.0).collect(),
            import: true,
            version,
        };
        Ok((granted, m))
    }

    /// Gives back what `granted` held; returns whether a slot was left with no write (or
    /// no import) under way, which is what waiters wait for.
    pub fn release(&mut self, granted: &Granted) -> bool {
        let counts = if granted.import {
            &mut self.importing
        } else {
            &mut self.writing
        };
        let mut emptied = false;
        for slot in &granted.slots {
            if let Some(n) = counts.get_mut(slot) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(slot);
                    emptied = true;
                }
            }
        }
        emptied
    }

    /// The move frozen at `since`, once no write to its slots is under way: `Err` when
    /// the table held has no such move out of this node's group.
    pub fn frozen_move(&self, since: u64) -> Result<Option<Moving>, String> {
        let Some((mine, table)) = self.held.as_ref() else {
            return Err("this node belongs to no group".to_owned());
        };
        let Some(m) = table
            .moving()
            .filter(|m| m.since == since && &m.from == mine)
        else {
            return Err(format!(
                "this node ({mine}) holds table version {}, which freezes no slot of {mine} at version {since}",
                table.version()
            ));
        };
        let busy = m.slots.iter().any(|s| self.writing.contains_key(&s.0));
        Ok((!busy).then(|| m.clone()))
    }

    /// When `key`'s slot is in the move under way out of this node's group or into it:
    /// the slot and the group it goes to. A read of it waits for the move to end.
    pub fn in_move(&self, key: &[u8]) -> Option<(u16, GroupId)> {
        let slot = slot_of(key);
        let (mine, table) = self.held.as_ref()?;
        let m = table.moving()?;
        (m.has(slot) && (&m.from == mine || &m.to == mine)).then(|| (slot.0, m.to.clone()))
    }

    /// `Err` with the owner when `key`'s slot is another group's.
    pub fn owns(&self, key: &[u8]) -> Result<(), Misdirected> {
        match self.held.as_ref() {
            Some((mine, table)) => table.misdirected(key, mine).map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    /// The version of the table held (0: none).
    pub fn version(&self) -> u64 {
        self.held.as_ref().map_or(0, |(_, table)| table.version())
    }

    /// The node's group and the table it holds, if it belongs to a group.
    pub fn held(&self) -> Option<&(GroupId, SlotTable)> {
        self.held.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::slots::{Slot, parse_slots};

    fn g(name: &str) -> GroupId {
        GroupId::new(name).expect("a group name")
    }

    /// A key whose slot is in `lo..hi`.
    fn key_in(lo: u16, hi: u16) -> Vec<u8> {
        (0u32..)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| (lo..hi).contains(&slot_of(k).0))
            .expect("a key")
    }

    /// g1 and g2 with equal shares (version 1), and the table with slots 0-99 frozen on
    /// their way from g1 to g2 (version 2).
    fn tables() -> (SlotTable, SlotTable) {
        let even = SlotTable::even(&[g("g1"), g("g2")]).expect("a table");
        let slots = parse_slots("0-99").expect("slots");
        let frozen = even.with_freeze(&slots, &g("g2")).expect("a freeze");
        (even, frozen)
    }

    #[test]
    fn a_node_with_no_table_owns_every_key_and_counts_nothing() {
        let mut gate = SlotGate::default();
        let granted = gate.claim(b"anything").expect("granted");
        assert_eq!(
            granted,
            Granted {
                slots: Vec::new(),
                import: false,
                version: 0
            }
        );
        assert!(!gate.release(&granted));
        assert_eq!(gate.owns(b"anything"), Ok(()));
        assert_eq!(gate.version(), 0);
        assert!(gate.claim_import(2).is_err());
        assert!(gate.frozen_move(2).is_err());
    }

    #[test]
    fn only_a_newer_table_is_learned() {
        let (even, frozen) = tables();
        let mut gate = SlotGate::default();
        assert_eq!(gate.learn(&g("g1"), None), None);
        assert_eq!(gate.learn(&g("g1"), Some(&frozen)), Some(2));
        assert_eq!(gate.learn(&g("g1"), Some(&even)), None, "an older one");
        assert_eq!(gate.learn(&g("g1"), Some(&frozen)), None, "the same one");
        assert_eq!(gate.version(), 2);
    }

    #[test]
    fn a_write_is_granted_only_in_the_groups_own_unfrozen_slots() {
        let (even, frozen) = tables();
        let mut gate = SlotGate::default();
        gate.learn(&g("g1"), Some(&even));
        let mine = key_in(0, 100);
        let theirs = key_in(9000, 16384);
        let granted = gate.claim(&mine).expect("g1's slot");
        assert_eq!(granted.version, 1);
        assert_eq!(granted.slots, vec![slot_of(&mine).0]);
        let Err(Unclaimed::Misdirected(m)) = gate.claim(&theirs) else {
            panic!("g2's slot");
        };
        assert_eq!((m.owner.as_str(), m.version), ("g2", 1));
        assert_eq!(gate.owns(&theirs), Err(m));

        // Frozen: refused at the owner and at the target alike, naming the target; a
        // slot outside the move is still granted.
        gate.learn(&g("g1"), Some(&frozen));
        assert_eq!(
            gate.claim(&mine),
            Err(Unclaimed::Frozen {
                slot: slot_of(&mine).0,
                to: Some(g("g2"))
            })
        );
        assert!(gate.claim(&key_in(200, 8192)).is_ok());
        let mut target = SlotGate::default();
        target.learn(&g("g2"), Some(&frozen));
        assert!(matches!(
            target.claim(&mine),
            Err(Unclaimed::Frozen { to: Some(_), .. })
        ));
        let in_move = Some((slot_of(&mine).0, g("g2")));
        assert_eq!(target.in_move(&mine), in_move, "on its way in");
        assert_eq!(gate.in_move(&mine), in_move, "on its way out");
        assert_eq!(gate.in_move(&key_in(200, 8192)), None, "not moving");
        // A third group is simply not the owner.
        let mut third = SlotGate::default();
        third.learn(&g("g3"), Some(&frozen));
        assert!(matches!(third.claim(&mine), Err(Unclaimed::Misdirected(_))));
    }

    #[test]
    fn an_export_waits_for_the_writes_granted_before_the_freeze() {
        let (even, frozen) = tables();
        let mut gate = SlotGate::default();
        gate.learn(&g("g1"), Some(&even));
        let before = gate.claim(&key_in(0, 100)).expect("granted");
        let elsewhere = gate.claim(&key_in(200, 8192)).expect("granted");
        gate.learn(&g("g1"), Some(&frozen));
        assert_eq!(gate.frozen_move(2), Ok(None), "a write under way");
        assert!(gate.release(&elsewhere));
        assert_eq!(gate.frozen_move(2), Ok(None), "that one was elsewhere");
        assert!(gate.release(&before));
        let m = gate.frozen_move(2).expect("the move").expect("drained");
        assert_eq!((m.from.as_str(), m.to.as_str(), m.since), ("g1", "g2", 2));
        assert!(gate.frozen_move(3).is_err(), "no move frozen at 3");
        let mut target = SlotGate::default();
        target.learn(&g("g2"), Some(&frozen));
        assert!(target.frozen_move(2).is_err(), "g2 exports nothing");
    }

    #[test]
    fn an_import_is_granted_only_to_the_target_of_that_move_and_holds_its_slots() {
        let (_, frozen) = tables();
        let mut source = SlotGate::default();
        source.learn(&g("g1"), Some(&frozen));
        assert!(
            source.claim_import(2).is_err(),
            "the source imports nothing"
        );
        let mut gate = SlotGate::default();
        gate.learn(&g("g2"), Some(&frozen));
        assert!(gate.claim_import(3).is_err(), "another move");
        let (granted, m) = gate.claim_import(2).expect("granted");
        assert_eq!(m.slots.len(), 100);
        assert_eq!((granted.import, granted.version), (true, 2));
        let key = key_in(0, 100);

        // Switched while the import runs: the slots are g2's, but their writes wait for
        // the import, so it can never overwrite them.
        let switched = frozen.with_switch().expect("a switch");
        gate.learn(&g("g2"), Some(&switched));
        assert_eq!(
            gate.claim(&key),
            Err(Unclaimed::Frozen {
                slot: slot_of(&key).0,
                to: None
            })
        );
        assert!(
            gate.claim_import(2).is_err(),
            "a late import after the switch"
        );
        assert!(gate.release(&granted));
        let write = gate.claim(&key).expect("granted once the import ended");
        assert_eq!(write.version, 3);
        assert_eq!(switched.owner(Slot(slot_of(&key).0)), &g("g2"));
    }
}

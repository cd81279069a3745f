//! The key space in slots: which group of nodes owns a key (docs/shards.md).
//!
//! A key maps to one of [`SLOTS`] slots by a stable hash, and a versioned [`SlotTable`]
//! says which group owns each slot. Nodes refuse a key whose slot their group does not
//! own, and routers (the proxy, the client, the load tool) send each key to its owner;
//! both read the same table, and the version tells who is behind.
//!
//! - **The hash** is Redis Cluster's: CRC16-XMODEM of the key, modulo 16,384, so a key
//!   lands in the slot Redis Cluster would give it (`foo` → 12182).
//! - **Hash tags.** When a key holds `{…}` with something between the braces, only that
//!   part is hashed: `{user42}.cart` and `{user42}.orders` share a slot, and so a group,
//!   and move together.
//! - **The table** is a total map: every slot has exactly one owner in every version. It
//!   travels as ranges (`[{"from":0,"to":8191,"group":"g1"}, …]`) and is checked when read
//!   back, so a hand-edited or damaged table is refused rather than routed by.
//!
//! - **A move** ([`Moving`]) is carried in the table: one version freezes the slots at
//!   their owner, the next gives them to the target (or calls the move off).
//!
//! Everything here is pure: moving slots returns a new table, planning a rebalance returns
//! the moves; carrying them out is the monitor's and the nodes' business.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, NodeIdError};

/// How many slots the key space has: Redis Cluster's number, so that a key's slot is the
/// one Redis would give it.
pub const SLOTS: u16 = 16_384;

/// One slot, `0..SLOTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Slot(pub u16);

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The slot of `key`: CRC16 of its hash tag, or of the whole key, modulo [`SLOTS`].
pub fn slot_of(key: &[u8]) -> Slot {
    Slot(crc16(hash_tag(key)) % SLOTS)
}

/// What of `key` is hashed: the part between the first `{` and the first `}` after it,
/// when that part is not empty; else the whole key (Redis Cluster's rule, so `{}x` and
/// `x{` hash whole).
pub fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(0) | None => key,
        Some(len) => &key[open + 1..open + 1 + len],
    }
}

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), bit by bit. Written here rather
/// than taken from a crate: it is a dozen lines, and the one variant that matters is
/// pinned by Redis's own test vector below.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The name of a group of nodes (`g1`, `g2`…): a primary and its standbys, with an epoch,
/// a failover and a sync set of their own. Spelled as a node id is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(NodeId);

impl GroupId {
    /// Checks and wraps a group's name.
    pub fn new(id: impl Into<String>) -> Result<Self, NodeIdError> {
        NodeId::new(id).map(GroupId)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl FromStr for GroupId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Slots `from..=to`, owned by `group`: how a table is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRange {
    pub from: u16,
    pub to: u16,
    pub group: GroupId,
}

/// Why a table, a set of slots or a move cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// A table with no group, or a rebalance over none.
    #[error("no group to own the slots")]
    NoGroups,
    /// A slot number past the last slot.
    #[error("slot {0} does not exist (slots are 0 to 16383)")]
    OutOfRange(u32),
    /// A range whose end comes before its start.
    #[error("slots {from}-{to}: the range ends before it starts")]
    Backwards { from: u16, to: u16 },
    /// A table that gives a slot no owner.
    #[error("slot {0} has no owner in the table")]
    Unowned(u16),
    /// A table that gives a slot two owners.
    #[error("slot {0} is listed twice in the table")]
    Twice(u16),
    /// Text that is not a list of slots.
    #[error("{0:?} is not a list of slots: write them as 0-99,200,300-310")]
    NotSlots(String),
    /// A move to a group the table does not know.
    #[error("group {0} owns no slot and is not one of the table's groups")]
    UnknownGroup(GroupId),
    /// A weight of zero for every group.
    #[error("the weights add up to 0: give at least one group a weight")]
    NoWeight,
    /// A move asked while another is under way.
    #[error(
        "slots {slots} are moving from {from} to {to} already: wait for that move, or cancel it"
    )]
    MoveUnderWay {
        slots: String,
        from: GroupId,
        to: GroupId,
    },
    /// A move whose slots have more than one owner, or are already the target's.
    #[error("slot {slot} is {owner}'s: a move takes slots of one group to another ({wanted})")]
    NotOneOwner {
        slot: u16,
        owner: GroupId,
        wanted: String,
    },
    /// A switch or a cancel with no move under way.
    #[error("no move is under way")]
    NoMove,
}

/// Slots on their way from one group to another: frozen at `from` (it owns them still but
/// takes no write to them) until the table's next version gives them to `to`, or the move
/// is cancelled (docs/shards.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moving {
    pub from: GroupId,
    pub to: GroupId,
    /// The slots, in ascending order.
    #[serde(with = "slot_list")]
    pub slots: Vec<Slot>,
    /// The table version that froze them.
    pub since: u64,
}

impl Moving {
    /// Whether `slot` is one of the move's.
    pub fn has(&self, slot: Slot) -> bool {
        self.slots.binary_search(&slot).is_ok()
    }
}

/// Writes a list of slots as a person does (`0-99,200`), and reads it back.
mod slot_list {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Slot, format_slots, parse_slots};

    pub fn serialize<S: Serializer>(slots: &[Slot], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_slots(slots))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Slot>, D::Error> {
        let text = String::deserialize(d)?;
        parse_slots(&text).map_err(serde::de::Error::custom)
    }
}

/// A list of slots as a person writes it: `0-99,200,300-310` (sorted first).
pub fn format_slots(slots: &[Slot]) -> String {
    let mut sorted = slots.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i].0;
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1].0 == end + 1 {
            end += 1;
            i += 1;
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Which group owns each slot, at a version: every slot has exactly one owner. Every
/// change makes a new version, one more than the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TableOnWire", into = "TableOnWire")]
pub struct SlotTable {
    version: u64,
    /// The owner of slot `s` is `groups[owners[s]]`.
    owners: Vec<u16>,
    /// Every group the table knows, sorted; a group may own no slot (it joined, or gave
    /// every slot away).
    groups: Vec<GroupId>,
    /// The move under way, if one is (boxed: a table travels inside views, and a move is
    /// rare).
    moving: Option<Box<Moving>>,
}

/// A table as it travels: its version, its groups and its ranges.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableOnWire {
    version: u64,
    groups: Vec<GroupId>,
    ranges: Vec<SlotRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    moving: Option<Moving>,
}

impl SlotTable {
    /// Version 1: the slots split in contiguous ranges as evenly as they divide, in the
    /// groups' order (two groups: 0-8191 and 8192-16383).
    pub fn even(groups: &[GroupId]) -> Result<SlotTable, SlotError> {
        let mut given: Vec<&GroupId> = Vec::new();
        for group in groups {
            if !given.contains(&group) {
                given.push(group);
            }
        }
        if given.is_empty() {
            return Err(SlotError::NoGroups);
        }
        let mut sorted: Vec<GroupId> = given.iter().map(|g| (*g).clone()).collect();
        sorted.sort();
        let n = u16::try_from(given.len()).unwrap_or(SLOTS).min(SLOTS);
        let (base, left_over) = (SLOTS / n, SLOTS % n);
        let mut owners = Vec::with_capacity(usize::from(SLOTS));
        // In the order given (so `even([g2, g1])` gives g2 the first range), the slots
        // left over one each to the first groups.
        for (k, group) in (0u16..).zip(given.iter().take(usize::from(n))) {
            let index = sorted.iter().position(|g| g == *group).unwrap_or(0);
            let share = base + u16::from(k < left_over);
            owners.extend(std::iter::repeat_n(index_u16(index), usize::from(share)));
        }
        Ok(SlotTable {
            version: 1,
            owners,
            groups: sorted,
            moving: None,
        })
    }

    /// Version 1: every slot `group`'s.
    pub fn whole(group: GroupId) -> SlotTable {
        SlotTable {
            version: 1,
            owners: vec![0; usize::from(SLOTS)],
            groups: vec![group],
            moving: None,
        }
    }

    /// The move under way, if one is.
    pub fn moving(&self) -> Option<&Moving> {
        self.moving.as_deref()
    }

    /// Whether `slot` is frozen by a move under way: its owner takes no write to it.
    pub fn frozen(&self, slot: Slot) -> bool {
        self.moving.as_ref().is_some_and(|m| m.has(slot))
    }

    /// The next version with `slots` frozen on their way to `to`: they must all be one
    /// other group's, and no other move under way. Ownership does not change yet.
    pub fn with_freeze(&self, slots: &[Slot], to: &GroupId) -> Result<SlotTable, SlotError> {
        if let Some(m) = &self.moving {
            return Err(SlotError::MoveUnderWay {
                slots: format_slots(&m.slots),
                from: m.from.clone(),
                to: m.to.clone(),
            });
        }
        if !self.groups.contains(to) {
            return Err(SlotError::UnknownGroup(to.clone()));
        }
        let mut sorted = slots.to_vec();
        sorted.sort();
        sorted.dedup();
        let Some(first) = sorted.first() else {
            return Err(SlotError::NotSlots(String::new()));
        };
        let from = self.owner(*first).clone();
        for slot in &sorted {
            let owner = self.owner(*slot);
            if owner != &from || owner == to {
                return Err(SlotError::NotOneOwner {
                    slot: slot.0,
                    owner: owner.clone(),
                    wanted: format!("{from} to {to}"),
                });
            }
        }
        let mut next = self.clone();
        next.version += 1;
        next.moving = Some(Box::new(Moving {
            from,
            to: to.clone(),
            slots: sorted,
            since: next.version,
        }));
        Ok(next)
    }

    /// The next version with the move under way done: its slots the target's, none frozen.
    pub fn with_switch(&self) -> Result<SlotTable, SlotError> {
        let m = self.moving.as_deref().ok_or(SlotError::NoMove)?;
        let mut next = self.with_moved(&m.slots, &m.to);
        next.moving = None;
        Ok(next)
    }

    /// The next version with the move under way called off: the slots stay their owner's,
    /// none frozen.
    pub fn with_cancel(&self) -> Result<SlotTable, SlotError> {
        if self.moving.is_none() {
            return Err(SlotError::NoMove);
        }
        let mut next = self.clone();
        next.version += 1;
        next.moving = None;
        Ok(next)
    }

    /// The table's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every group the table knows, sorted.
    pub fn groups(&self) -> &[GroupId] {
        &self.groups
    }

    /// The group that owns `slot`.
    pub fn owner(&self, slot: Slot) -> &GroupId {
        let index = self.owners[usize::from(slot.0 % SLOTS)];
        &self.groups[usize::from(index)]
    }

    /// The group that owns `key`.
    pub fn owner_of(&self, key: &[u8]) -> &GroupId {
        self.owner(slot_of(key))
    }

    /// How many slots `group` owns.
    pub fn count(&self, group: &GroupId) -> usize {
        match self.groups.iter().position(|g| g == group) {
            Some(index) => self
                .owners
                .iter()
                .filter(|&&o| o == index_u16(index))
                .count(),
            None => 0,
        }
    }

    /// The table as ranges of consecutive slots with one owner, in slot order.
    pub fn ranges(&self) -> Vec<SlotRange> {
        let mut ranges: Vec<SlotRange> = Vec::new();
        for (slot, &owner) in (0u16..).zip(&self.owners) {
            let group = &self.groups[usize::from(owner)];
            match ranges.last_mut() {
                Some(last) if &last.group == group && last.to + 1 == slot => last.to = slot,
                _ => ranges.push(SlotRange {
                    from: slot,
                    to: slot,
                    group: group.clone(),
                }),
            }
        }
        ranges
    }

    /// The slots `group` owns, as a person writes them (`0-99,8192-16383`); empty when
    /// it owns none.
    pub fn slots_text(&self, group: &GroupId) -> String {
        let owned: Vec<Slot> = (0..SLOTS)
            .map(Slot)
            .filter(|s| self.owner(*s) == group)
            .collect();
        format_slots(&owned)
    }

    /// A new version with `slots` owned by `to` (which may be a group new to the table).
    pub fn with_moved(&self, slots: &[Slot], to: &GroupId) -> SlotTable {
        let mut next = self.clone();
        let index = match next.groups.binary_search(to) {
            Ok(index) => index,
            Err(at) => {
                // A new group: the indexes at and after `at` move up by one.
                next.groups.insert(at, to.clone());
                for owner in &mut next.owners {
                    if usize::from(*owner) >= at {
                        *owner += 1;
                    }
                }
                at
            }
        };
        for slot in slots {
            next.owners[usize::from(slot.0 % SLOTS)] = index_u16(index);
        }
        next.version += 1;
        next
    }

    /// The moves that bring each group of `weights` to its share of the slots (by weight;
    /// equal weights for an equal share), moving as few slots as it can: each group over
    /// its share gives its highest slots to the groups under theirs. A group of the
    /// table missing from `weights` gives all its slots away.
    pub fn rebalance(&self, weights: &BTreeMap<GroupId, u32>) -> Result<Vec<Move>, SlotError> {
        let mut all: Vec<GroupId> = weights.keys().cloned().collect();
        for group in &self.groups {
            if !weights.contains_key(group) {
                all.push(group.clone());
            }
        }
        all.sort();
        let mut full = weights.clone();
        for group in &all {
            full.entry(group.clone()).or_insert(0);
        }
        let shares = shares(&all, &full)?;
        // What each group has to give, highest slots first, and how many each lacks.
        let mut spare: Vec<(GroupId, Vec<Slot>)> = Vec::new();
        let mut lacking: Vec<(GroupId, usize)> = Vec::new();
        for group in &all {
            let want = usize::from(shares.get(group).copied().unwrap_or(0));
            let owned: Vec<Slot> = (0..SLOTS)
                .map(Slot)
                .filter(|s| self.owner(*s) == group && self.groups.contains(group))
                .collect();
            if owned.len() > want {
                spare.push((group.clone(), owned[want..].to_vec()));
            } else if owned.len() < want {
                lacking.push((group.clone(), want - owned.len()));
            }
        }
        let mut moves: Vec<Move> = Vec::new();
        let mut givers = spare.into_iter();
        let mut current: Option<(GroupId, std::vec::IntoIter<Slot>)> =
            givers.next().map(|(g, s)| (g, s.into_iter()));
        for (to, mut count) in lacking {
            while count > 0 {
                let Some((from, slots)) = current.as_mut() else {
                    break;
                };
                match slots.next() {
                    Some(slot) => {
                        push_move(&mut moves, from, &to, slot);
                        count -= 1;
                    }
                    None => current = givers.next().map(|(g, s)| (g, s.into_iter())),
                }
            }
        }
        Ok(moves)
    }
}

/// A key asked of a group that does not own its slot: who does, in which version of the
/// table (Redis Cluster's `MOVED`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Misdirected {
    pub slot: Slot,
    pub owner: GroupId,
    pub version: u64,
}

impl SlotTable {
    /// `None` when `mine` owns `key`'s slot; else who does.
    pub fn misdirected(&self, key: &[u8], mine: &GroupId) -> Option<Misdirected> {
        let slot = slot_of(key);
        let owner = self.owner(slot);
        (owner != mine).then(|| Misdirected {
            slot,
            owner: owner.clone(),
            version: self.version,
        })
    }
}

/// Slots going from one group to another, in ascending order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub from: GroupId,
    pub to: GroupId,
    pub slots: Vec<Slot>,
}

/// Adds `slot` to the last move if it goes the same way, else starts a new one.
fn push_move(moves: &mut Vec<Move>, from: &GroupId, to: &GroupId, slot: Slot) {
    match moves.last_mut() {
        Some(last) if &last.from == from && &last.to == to => last.slots.push(slot),
        _ => moves.push(Move {
            from: from.clone(),
            to: to.clone(),
            slots: vec![slot],
        }),
    }
}

/// Each group's number of slots by weight: the floor of its part, the slots left over
/// going one each to the groups with the largest remainders (ties to the first name).
fn shares(
    groups: &[GroupId],
    weights: &BTreeMap<GroupId, u32>,
) -> Result<BTreeMap<GroupId, u16>, SlotError> {
    if groups.is_empty() {
        return Err(SlotError::NoGroups);
    }
    let total: u64 = groups
        .iter()
        .map(|g| u64::from(weights.get(g).copied().unwrap_or(0)))
        .sum();
    if total == 0 {
        return Err(SlotError::NoWeight);
    }
    let mut shares = BTreeMap::new();
    let mut remainders: Vec<(u64, usize)> = Vec::new();
    let mut given: u64 = 0;
    for (i, group) in groups.iter().enumerate() {
        let part = u64::from(weights.get(group).copied().unwrap_or(0)) * u64::from(SLOTS);
        let share = part / total;
        given += share;
        remainders.push((part % total, i));
        shares.insert(group.clone(), u16::try_from(share).unwrap_or(SLOTS));
    }
    // Largest remainder first; the sort is stable, so ties keep the names' order.
    remainders.sort_by_key(|r| std::cmp::Reverse(r.0));
    for &(_, i) in remainders
        .iter()
        .take(usize::try_from(u64::from(SLOTS) - given).unwrap_or(0))
    {
        if let Some(share) = shares.get_mut(&groups[i]) {
            *share += 1;
        }
    }
    Ok(shares)
}

/// An index into a table's groups, which number at most [`SLOTS`].
fn index_u16(index: usize) -> u16 {
    u16::try_from(index).unwrap_or(u16::MAX)
}

impl TryFrom<TableOnWire> for SlotTable {
    type Error = SlotError;

    fn try_from(wire: TableOnWire) -> Result<Self, Self::Error> {
        let mut groups = wire.groups;
        for range in &wire.ranges {
            if !groups.contains(&range.group) {
                groups.push(range.group.clone());
            }
        }
        groups.sort();
        groups.dedup();
        if groups.is_empty() {
            return Err(SlotError::NoGroups);
        }
        let mut owners: Vec<Option<u16>> = vec![None; usize::from(SLOTS)];
        for range in &wire.ranges {
            if range.to < range.from {
                return Err(SlotError::Backwards {
                    from: range.from,
                    to: range.to,
                });
            }
            if range.to >= SLOTS {
                return Err(SlotError::OutOfRange(u32::from(range.to)));
            }
            let index = groups.iter().position(|g| g == &range.group).unwrap_or(0);
            for slot in range.from..=range.to {
                let owner = &mut owners[usize::from(slot)];
                if owner.is_some() {
                    return Err(SlotError::Twice(slot));
                }
                *owner = Some(index_u16(index));
            }
        }
        let owners = (0u16..)
            .zip(owners)
            .map(|(slot, owner)| owner.ok_or(SlotError::Unowned(slot)))
            .collect::<Result<Vec<u16>, SlotError>>()?;
        let table = SlotTable {
            version: wire.version,
            owners,
            groups,
            moving: None,
        };
        if let Some(m) = wire.moving {
            // A move's slots are all the source's, on their way to another known group.
            for slot in &m.slots {
                let owner = table.owner(*slot);
                if owner != &m.from || m.to == m.from || !table.groups.contains(&m.to) {
                    return Err(SlotError::NotOneOwner {
                        slot: slot.0,
                        owner: owner.clone(),
                        wanted: format!("{} to {}", m.from, m.to),
                    });
                }
            }
            return Ok(SlotTable {
                moving: Some(Box::new(m)),
                ..table
            });
        }
        Ok(table)
    }
}

impl From<SlotTable> for TableOnWire {
    fn from(table: SlotTable) -> Self {
        TableOnWire {
            version: table.version,
            ranges: table.ranges(),
            groups: table.groups,
            moving: table.moving.map(|m| *m),
        }
    }
}

/// Parses a list of slots as a person writes it: `0-99,200,300-310` (spaces allowed
/// around the commas), in ascending order with no slot twice.
pub fn parse_slots(text: &str) -> Result<Vec<Slot>, SlotError> {
    let not_slots = || SlotError::NotSlots(text.to_owned());
    let number = |s: &str| -> Result<u16, SlotError> {
        let n: u32 = s.trim().parse().map_err(|_| not_slots())?;
        if n >= u32::from(SLOTS) {
            return Err(SlotError::OutOfRange(n));
        }
        u16::try_from(n).map_err(|_| SlotError::OutOfRange(n))
    };
    let mut slots = Vec::new();
    for part in text.split(',') {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if to < from {
            return Err(SlotError::Backwards { from, to });
        }
        slots.extend((from..=to).map(Slot));
    }
    if slots.is_empty() {
        return Err(not_slots());
    }
    slots.sort();
    slots.dedup();
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str) -> GroupId {
        GroupId::new(name).expect("a group name")
    }

    #[test]
    fn a_move_freezes_its_slots_then_switches_them_in_the_next_version() {
        let t = SlotTable::even(&[g("g1"), g("g2")]).expect("a table");
        let slots = parse_slots("0-99").expect("slots");
        let frozen = t.with_freeze(&slots, &g("g2")).expect("a freeze");
        assert_eq!(frozen.version(), 2);
        assert!(frozen.frozen(Slot(0)) && frozen.frozen(Slot(99)) && !frozen.frozen(Slot(100)));
        assert_eq!(
            frozen.owner(Slot(0)),
            &g("g1"),
            "g1 owns them until the switch"
        );
        let m = frozen.moving().expect("a move");
        assert_eq!((&m.from, &m.to, m.since), (&g("g1"), &g("g2"), 2));
        // The freeze travels with the table and reads back the same.
        let json = serde_json::to_value(&frozen).expect("json");
        assert_eq!(json["moving"]["slots"], "0-99");
        let back: SlotTable = serde_json::from_value(json).expect("read back");
        assert_eq!(back, frozen);

        // One move at a time, of one group's slots, to another group.
        assert!(matches!(
            frozen.with_freeze(&[Slot(200)], &g("g2")),
            Err(SlotError::MoveUnderWay { .. })
        ));
        assert!(matches!(
            t.with_freeze(&[Slot(0), Slot(9000)], &g("g2")),
            Err(SlotError::NotOneOwner { slot: 9000, .. })
        ));
        assert!(matches!(
            t.with_freeze(&[Slot(9000)], &g("g2")),
            Err(SlotError::NotOneOwner { slot: 9000, .. })
        ));
        assert!(matches!(
            t.with_freeze(&[Slot(0)], &g("g9")),
            Err(SlotError::UnknownGroup(_))
        ));

        let switched = frozen.with_switch().expect("a switch");
        assert_eq!(switched.version(), 3);
        assert_eq!(switched.owner(Slot(0)), &g("g2"));
        assert_eq!(switched.owner(Slot(100)), &g("g1"));
        assert!(switched.moving().is_none() && !switched.frozen(Slot(0)));
        let cancelled = frozen.with_cancel().expect("a cancel");
        assert_eq!(cancelled.version(), 3);
        assert_eq!(cancelled.owner(Slot(0)), &g("g1"));
        assert!(cancelled.moving().is_none());
        assert_eq!(t.with_switch(), Err(SlotError::NoMove));
        assert_eq!(t.with_cancel(), Err(SlotError::NoMove));
    }

    #[test]
    fn a_damaged_move_is_refused_when_read() {
        let t = SlotTable::even(&[g("g1"), g("g2")]).expect("a table");
        let mut json = serde_json::to_value(&t).expect("json");
        json["moving"] = serde_json::json!({"from": "g2", "to": "g1", "slots": "0-9", "since": 1});
        let read: Result<SlotTable, _> = serde_json::from_value(json);
        assert!(read.is_err(), "slots 0-9 are g1's, not g2's");
        assert_eq!(
            format_slots(&[Slot(5), Slot(1), Slot(2), Slot(3), Slot(9)]),
            "1-3,5,9"
        );
    }

    #[test]
    fn a_key_has_the_slot_redis_cluster_gives_it() {
        // Redis's own test vector for its CRC16, and slots `CLUSTER KEYSLOT` answers.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), Slot(12182));
        assert_eq!(slot_of(b"bar"), Slot(5061));
        assert_eq!(slot_of(b""), Slot(0));
        assert!(slot_of(&[0xff; 300]).0 < SLOTS);
    }

    #[test]
    fn a_hash_tag_keeps_related_keys_in_one_slot() {
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(
            slot_of(b"{user1000}.following"),
            slot_of(b"{user1000}.followers")
        );
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar", "the first tag only");
        assert_eq!(
            hash_tag(b"foo{}{bar}"),
            b"foo{}{bar}",
            "an empty tag hashes whole"
        );
        assert_eq!(
            hash_tag(b"foo{{bar}}zap"),
            b"{bar",
            "up to the first closing brace"
        );
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar", "no closing brace");
    }

    #[test]
    fn an_even_table_splits_the_slots_in_contiguous_ranges() {
        let table = SlotTable::even(&[g("g1"), g("g2")]).expect("a table");
        assert_eq!(table.version(), 1);
        assert_eq!(
            table.ranges(),
            [
                SlotRange {
                    from: 0,
                    to: 8191,
                    group: g("g1")
                },
                SlotRange {
                    from: 8192,
                    to: 16383,
                    group: g("g2")
                },
            ]
        );
        assert_eq!(table.owner_of(b"foo"), &g("g2"));
        assert_eq!(table.owner_of(b"bar"), &g("g1"));
        let three = SlotTable::even(&[g("g1"), g("g2"), g("g3")]).expect("a table");
        let counts: Vec<usize> = ["g1", "g2", "g3"]
            .iter()
            .map(|n| three.count(&g(n)))
            .collect();
        assert_eq!(
            counts,
            [5462, 5461, 5461],
            "the one slot left over goes to g1"
        );
        assert_eq!(SlotTable::even(&[]), Err(SlotError::NoGroups));
    }

    #[test]
    fn a_key_of_another_groups_slot_is_misdirected_and_says_to_whom() {
        let table = SlotTable::even(&[g("g1"), g("g2")]).expect("a table");
        assert_eq!(table.misdirected(b"bar", &g("g1")), None);
        assert_eq!(
            table.misdirected(b"foo", &g("g1")),
            Some(Misdirected {
                slot: Slot(12182),
                owner: g("g2"),
                version: 1
            })
        );
    }

    #[test]
    fn a_move_makes_a_new_version_and_may_bring_a_new_group() {
        let table = SlotTable::even(&[g("g1"), g("g2")]).expect("a table");
        let moved = table.with_moved(&[Slot(0), Slot(1), Slot(8192)], &g("g0"));
        assert_eq!(moved.version(), 2);
        assert_eq!(moved.groups(), [g("g0"), g("g1"), g("g2")]);
        assert_eq!(moved.owner(Slot(0)), &g("g0"));
        assert_eq!(moved.owner(Slot(2)), &g("g1"));
        assert_eq!(moved.owner(Slot(8192)), &g("g0"));
        assert_eq!(moved.owner(Slot(8193)), &g("g2"));
        assert_eq!(moved.count(&g("g1")), 8190);
        assert_eq!(table.version(), 1, "the old table is unchanged");
    }

    #[test]
    fn a_table_travels_as_ranges_and_a_damaged_one_is_refused() {
        let table = SlotTable::even(&[g("g1"), g("g2")])
            .expect("a table")
            .with_moved(&[Slot(5)], &g("g2"));
        let text = serde_json::to_string(&table).expect("JSON");
        assert_eq!(
            text,
            r#"{"version":2,"groups":["g1","g2"],"ranges":[{"from":0,"to":4,"group":"g1"},{"from":5,"to":5,"group":"g2"},{"from":6,"to":8191,"group":"g1"},{"from":8192,"to":16383,"group":"g2"}]}"#
        );
        let back: SlotTable = serde_json::from_str(&text).expect("read back");
        assert_eq!(back, table);
        for (damaged, why) in [
            (
                r#"{"version":1,"groups":[],"ranges":[{"from":0,"to":100,"group":"g1"}]}"#,
                "slot 101 has no owner",
            ),
            (
                r#"{"version":1,"groups":[],"ranges":[{"from":0,"to":16383,"group":"g1"},{"from":7,"to":7,"group":"g2"}]}"#,
                "slot 7 is listed twice",
            ),
            (
                r#"{"version":1,"groups":[],"ranges":[{"from":0,"to":16384,"group":"g1"}]}"#,
                "slot 16384 does not exist",
            ),
            (r#"{"version":1,"groups":[],"ranges":[]}"#, "no group"),
        ] {
            let e = serde_json::from_str::<SlotTable>(damaged).expect_err(damaged);
            assert!(e.to_string().contains(why), "{e}");
        }
    }

    #[test]
    fn slots_are_parsed_as_a_person_writes_them() {
        assert_eq!(
            parse_slots("0-2, 7,5").expect("slots"),
            [Slot(0), Slot(1), Slot(2), Slot(5), Slot(7)]
        );
        assert_eq!(parse_slots("16383").expect("slots"), [Slot(16383)]);
        assert_eq!(parse_slots("16384"), Err(SlotError::OutOfRange(16384)));
        assert_eq!(
            parse_slots("9-3"),
            Err(SlotError::Backwards { from: 9, to: 3 })
        );
        for bad in ["", "a", "1-", "-1", "1,,2"] {
            assert_eq!(
                parse_slots(bad),
                Err(SlotError::NotSlots(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_rebalance_moves_the_fewest_slots_to_reach_each_share() {
        let one = SlotTable::even(&[g("g1")]).expect("a table");
        let equal: BTreeMap<GroupId, u32> = [(g("g1"), 1), (g("g2"), 1)].into();
        let moves = one.rebalance(&equal).expect("moves");
        assert_eq!(moves.len(), 1);
        assert_eq!((&moves[0].from, &moves[0].to), (&g("g1"), &g("g2")));
        assert_eq!(moves[0].slots.len(), 8192);
        assert_eq!(moves[0].slots[0], Slot(8192), "the highest slots go");
        let after = one.with_moved(&moves[0].slots, &g("g2"));
        assert_eq!(
            after.rebalance(&equal).expect("moves"),
            [],
            "balanced already"
        );

        // By weight: 3 to 1.
        let weighted: BTreeMap<GroupId, u32> = [(g("g1"), 3), (g("g2"), 1)].into();
        let moves = after.rebalance(&weighted).expect("moves");
        assert_eq!(moves.len(), 1);
        assert_eq!((&moves[0].from, &moves[0].to), (&g("g2"), &g("g1")));
        assert_eq!(moves[0].slots.len(), 8192 - 4096);

        // A group left out gives everything away.
        let only_g2: BTreeMap<GroupId, u32> = [(g("g2"), 1)].into();
        let moves = after.rebalance(&only_g2).expect("moves");
        let given: usize = moves.iter().map(|m| m.slots.len()).sum();
        assert_eq!(given, 8192);
        let zero: BTreeMap<GroupId, u32> = [(g("g1"), 0)].into();
        assert_eq!(one.rebalance(&zero), Err(SlotError::NoWeight));
    }
}

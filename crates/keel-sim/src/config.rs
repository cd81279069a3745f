//! What a run simulates: how many nodes and groups, which faults, how long, and a flaw to
//! plant.

use std::fmt;
use std::str::FromStr;

/// The faults a run may inject. Which of them strike, when and for how long comes from
/// the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Requests (heartbeats, probes, client calls) lost on the way.
    pub loss: bool,
    /// Delays of up to 150 ms on top of the usual 0.2–3 ms, which also reorders.
    pub delay: bool,
    /// Requests delivered twice.
    pub duplicate: bool,
    /// Nodes or monitors cut off from some or all of the others, then healed.
    pub partition: bool,
    /// Nodes or monitors killed and restarted; a commit in flight may or may not have
    /// reached the disk.
    pub crash: bool,
    /// Clocks running up to 5% fast or slow (within what the lease's drift allows).
    pub clock: bool,
}

impl Faults {
    /// Every fault.
    pub const ALL: Faults = Faults {
        loss: true,
        delay: true,
        duplicate: true,
        partition: true,
        crash: true,
        clock: true,
    };
    /// No fault: the happy path.
    pub const NONE: Faults = Faults {
        loss: false,
        delay: false,
        duplicate: false,
        partition: false,
        crash: false,
        clock: false,
    };
    const NAMES: [&'static str; 6] = ["loss", "delay", "duplicate", "partition", "crash", "clock"];

    fn flags(&self) -> [bool; 6] {
        [
            self.loss,
            self.delay,
            self.duplicate,
            self.partition,
            self.crash,
            self.clock,
        ]
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on: Vec<&str> = Self::NAMES
            .iter()
            .zip(self.flags())
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        if on.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", on.join(","))
        }
    }
}

/// A fault list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown fault {0:?}: expected all, none, or a comma-separated list of loss, delay, duplicate, partition, crash, clock"
)]
pub struct BadFaults(pub String);

impl FromStr for Faults {
    type Err = BadFaults;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => return Ok(Faults::ALL),
            "none" => return Ok(Faults::NONE),
            _ => {}
        }
        let mut f = Faults::NONE;
        for name in s.split(',').map(str::trim) {
            match name {
                "loss" => f.loss = true,
                "delay" => f.delay = true,
                "duplicate" => f.duplicate = true,
                "partition" => f.partition = true,
                "crash" => f.crash = true,
                "clock" => f.clock = true,
                other => return Err(BadFaults(other.to_owned())),
            }
        }
        Ok(f)
    }
}

/// A mistake planted on purpose, to show that the simulator finds what it must. Only the
/// simulator's own drivers change; the machines run as they ship.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Flaw {
    /// None: keel as it is.
    #[default]
    None,
    /// The primary answers its writers as soon as its own commit is durable, without
    /// waiting for the sync standbys' acks.
    AckBeforeReplication,
    /// The primary answers reads without checking its lease.
    ReadWithoutLease,
    /// The primary answers reads at once, showing writes its sync standbys may not have
    /// yet (keel did, until `keel sim` found it with seed 206).
    DirtyRead,
    /// A group's leader renews leases without a majority's recent acknowledgement (it may
    /// have been deposed without knowing it).
    LeaseWithoutMajority,
    /// A group's leader answers the nodes as soon as it has decided, before the decision
    /// commits (it may never commit).
    AnswerBeforeCommit,
    /// A node answers reads of a slot in a move as its table says: the source goes on
    /// answering them until it hears of the switch, after which the target may have taken
    /// writes (keel did, until a test of the suite caught the source answering one).
    ReadMovingSlots,
    /// The source of a slot move goes on taking writes of the slots it froze (keel's
    /// node holds them until the move ends: `SlotGate::claim`).
    WriteFrozenSlots,
}

/// A run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data nodes of each group (at least 2).
    pub nodes: usize,
    /// Groups of data nodes, each a primary and its standbys with its own epoch and
    /// failover; with two or more, the keys' slots are split among them and an operator
    /// moves slots between them while the faults strike (docs/shards.md).
    pub groups: usize,
    /// Monitors: 1 alone, or a group of 3 or 5 replicating the cluster state with Raft.
    pub monitors: usize,
    /// The faults that may strike.
    pub faults: Faults,
    /// Simulated milliseconds during which clients work and faults strike.
    pub active_ms: u64,
    /// Simulated milliseconds after every fault has healed, for the cluster to settle
    /// before the final reads.
    pub settle_ms: u64,
    /// Clients issuing reads and writes.
    pub clients: usize,
    /// Keys they work on.
    pub keys: usize,
    /// A planted mistake (tests only).
    pub flaw: Flaw,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nodes: 3,
            groups: 1,
            monitors: 1,
            faults: Faults::ALL,
            active_ms: 6_000,
            settle_ms: 4_000,
            clients: 3,
            keys: 4,
            flaw: Flaw::None,
        }
    }
}

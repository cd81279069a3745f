//! keel's deterministic simulator: the real monitor and node machines, driven in one
//! thread over a simulated network, clocks and disks, under faults chosen by a seed.
//!
//! - [`rng`]: [`Rng`], the only source of chance (SplitMix64): one seed, one run;
//! - [`config`]: [`Config`], what a run simulates, and the [`Faults`] it may inject;
//! - [`net`]: what travels between processes, and how the network loses, delays,
//!   duplicates and partitions it;
//! - `world`: simulated time, the event queue, the clients (routing by key), the fault
//!   schedule, the operator's slot moves, and the invariants checked after every step;
//! - `group`: the monitors — `keel monitor`'s own machine of one group or several, alone
//!   or under a model of Raft — and the leader's copies of a slot move, piece by piece;
//! - `node`: the data nodes' drivers — writer, senders, receiver, heartbeat, the slot
//!   exports and imports — carrying out what [`keel_node::machine::Machine`] and
//!   [`keel_node::gate::SlotGate`] decide, on a [`keel_store::MemStore`] that can crash
//!   mid-commit;
//! - [`linear`]: the linearizability check of every key's history (Wing & Gong with
//!   memoisation);
//! - [`run`] and [`run_seeds`]: one seed, or many, with what each found.
//!
//! What is checked: at most one node of a group can acknowledge writes at any simulated
//! instant; epochs never go back, on any node's disk or in what the monitors committed;
//! in a group of monitors, at most one leads a term and no committed state is lost; every
//! acknowledged write is durable on the primary and on its sync set when it is
//! acknowledged; under several groups, a node acknowledges writes only of slots its
//! group owns, unfrozen, in a table the monitors committed, and one group at a time
//! acknowledges a slot's writes; once the faults heal, every group has a primary again;
//! and every key's history of reads and writes, across the groups that owned it, is
//! linearizable, writes of unknown outcome taking effect at any time after they were
//! sent, or never.
//!
//! Nothing reads the wall clock or the OS's randomness, and every collection iterated is
//! ordered, so the same seed gives the same trace, byte for byte.
#![forbid(unsafe_code)]

pub mod config;
mod group;
pub mod linear;
pub mod net;
mod node;
pub mod rng;
mod world;

pub use config::{Config, Faults, Flaw};
pub use rng::Rng;
pub use world::{Outcome, Violation};

/// Runs one seed.
pub fn run(seed: u64, config: &Config) -> Outcome {
    world::World::new(seed, config.clone()).run()
}

/// What a failing seed showed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// What broke.
    pub violation: Violation,
    /// The last steps before it.
    pub trace_tail: Vec<String>,
}

/// What many seeds showed.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// The seeds that broke an invariant.
    pub failures: Vec<Failure>,
    /// Writes acknowledged, over all seeds.
    pub writes_ok: u64,
    /// Reads answered.
    pub reads_ok: u64,
    /// Operations of unknown outcome.
    pub unknown: u64,
    /// Failovers completed.
    pub failovers: u64,
    /// Slot moves completed.
    pub moves: u64,
    /// Slot moves called off.
    pub cancelled: u64,
    /// Monitors elected leader of a term.
    pub elections: u64,
    /// Events simulated.
    pub steps: u64,
}

/// Runs `seeds`, calling `each` after every one (for progress).
pub fn run_seeds(
    seeds: impl IntoIterator<Item = u64>,
    config: &Config,
    tail: usize,
    mut each: impl FnMut(u64, &Outcome),
) -> Summary {
    let mut summary = Summary::default();
    for seed in seeds {
        let outcome = run(seed, config);
        each(seed, &outcome);
        summary.seeds += 1;
        summary.writes_ok += outcome.writes_ok;
        summary.reads_ok += outcome.reads_ok;
        summary.unknown += outcome.unknown;
        summary.failovers += outcome.failovers;
        summary.moves += outcome.moves;
        summary.cancelled += outcome.cancelled;
        summary.elections += outcome.elections;
        summary.steps += outcome.steps;
        if let Some(violation) = outcome.violation {
            let start = outcome.trace.len().saturating_sub(tail);
            summary.failures.push(Failure {
                seed,
                violation,
                trace_tail: outcome.trace[start..].to_vec(),
            });
        }
    }
    summary
}
